"""Strict FIFO between connections: commit order decides seq, and no one jumps the line."""

from __future__ import annotations

import asyncio

import psycopg
from helpers import assert_fifo_and_limit, fetch_rows, wait_until

from fifoq import QueueManager, Status


async def lock_waiters(dsn: str) -> int:
    """Sessions of this database waiting for a lock (the queue lock, or a row lock)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_an_enqueue_waits_for_an_earlier_uncommitted_one_and_comes_after_it(
    dsn: str,
) -> None:
    async with (
        QueueManager.connect(dsn, name="a") as a,
        QueueManager.connect(dsn, name="b") as b,
        await psycopg.AsyncConnection.connect(dsn) as tx,
    ):
        await a.set_policy("order.commit", max_concurrent=1)
        head = await a.enqueue("order.commit")
        async with tx.transaction():
            first = await a.enqueue("order.commit", {"who": "tx"}, conn=tx)
            # b's enqueue must wait for tx to end: it may not take seq first+1
            # and become visible while first is still in flight.
            later = asyncio.create_task(b.enqueue("order.commit", {"who": "b"}))
            await wait_until(lambda: lock_waiters(dsn), message="b waiting for the queue lock")
            assert not later.done()
        second = await asyncio.wait_for(later, timeout=5)
    assert (head.seq, first.seq, second.seq) == (1, 2, 3)
    assert second.enqueued_at > first.enqueued_at


async def test_a_rolled_back_enqueue_leaves_no_hole_in_the_seq_numbers(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="a") as a,
        await psycopg.AsyncConnection.connect(dsn) as tx,
    ):
        await a.set_policy("order.rollback", max_concurrent=1)
        await a.enqueue("order.rollback")
        await tx.execute("BEGIN")
        doomed = await a.enqueue("order.rollback", conn=tx)
        later = asyncio.create_task(a.enqueue("order.rollback"))
        await wait_until(lambda: lock_waiters(dsn), message="waiting for the queue lock")
        await tx.rollback()
        after = await asyncio.wait_for(later, timeout=5)
    assert doomed.seq == after.seq == 2
    rows = await fetch_rows(dsn, "order.rollback")
    assert [r.seq for r in rows] == [1, 2]


async def test_a_newcomer_never_jumps_waiters_even_when_a_slot_is_free(dsn: str) -> None:
    """An outside row lock keeps the head from being admitted, leaving a slot free.

    The newcomer must still queue behind the waiters, and the waiter behind
    the locked head must not be started first either.
    """
    async with (
        QueueManager.connect(dsn, name="a", poll_interval=0.2) as a,
        await psycopg.AsyncConnection.connect(dsn) as outsider,
    ):
        await a.set_policy("order.jump", max_concurrent=1)
        running = await a.enqueue("order.jump")
        head = await a.enqueue("order.jump")
        behind = await a.enqueue("order.jump")
        # An operator's SELECT ... FOR UPDATE on the head, held open.
        await outsider.execute(
            "SELECT 1 FROM fifoq.executions WHERE id = %s FOR UPDATE", (head.id,)
        )
        await a.complete(running.id)
        stats = await a.stats("order.jump")
        assert (stats.active_count, stats.queue_length) == (0, 2)  # a free slot, two waiting
        assert (await a.get(behind.id)).status is Status.QUEUED  # not started past the head

        newcomer = await a.enqueue("order.jump")
        assert newcomer.status is Status.QUEUED
        assert newcomer.seq == behind.seq + 1

        # Once the lock is gone the maintenance pass admits the head, and only the head.
        await outsider.rollback()
        await wait_until(
            lambda: _status_is(a, head.id, Status.ACTIVE), timeout=3, message="head admitted"
        )
        for execution in (behind, newcomer):
            assert (await a.get(execution.id)).status is Status.QUEUED
        await a.complete(head.id)
        assert (await a.get(behind.id)).status is Status.ACTIVE
        await a.complete(behind.id)
        assert (await a.get(newcomer.id)).status is Status.ACTIVE
    assert_fifo_and_limit(await fetch_rows(dsn, "order.jump"), 1)


async def _status_is(qm: QueueManager, execution_id: int, status: Status) -> bool:
    return (await qm.get(execution_id)).status is status


async def test_waiters_from_two_executors_start_in_commit_order(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="a") as a,
        QueueManager.connect(dsn, name="b") as b,
    ):
        await a.set_policy("order.two", max_concurrent=1)
        blocker = await a.enqueue("order.two")
        # Alternate executors; each enqueue commits before the next starts.
        queued = [await (a if i % 2 else b).enqueue("order.two", {"i": i}) for i in range(20)]
        started: list[int] = []

        async def wait(qm: QueueManager, i: int) -> None:
            ex = await qm.wait_started(queued[i].id)
            started.append(i)
            await qm.complete(ex.id)

        tasks = [asyncio.create_task(wait(a if i % 2 else b, i)) for i in reversed(range(20))]
        await a.complete(blocker.id)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
    assert started == list(range(20))
    assert_fifo_and_limit(await fetch_rows(dsn, "order.two"), 1)
