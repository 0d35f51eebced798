"""The basic API: what executions, results and statistics look like."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from helpers import fetch_rows, wait_until

from fifoq import Execution, ExecutionAbandoned, FifoqError, QueueManager, Status


async def test_an_execution_carries_its_fields_through_its_life(qm: QueueManager) -> None:
    payload = {"host": "a", "n": [1, 2], "text": "ünï"}
    ex = await qm.enqueue_and_wait("api.fields", payload)
    assert (ex.action, ex.group, ex.seq, ex.status) == ("api.fields", None, 1, Status.ACTIVE)
    assert ex.payload == payload and ex.owner == qm.executor_id
    assert ex.started_at is not None and ex.started_at >= ex.enqueued_at
    assert ex.finished_at is None and ex.result is None and ex.error is None

    done = await qm.complete(ex.id, result={"ok": True, "list": [None, 1.5]})
    assert done.status is Status.SUCCEEDED
    assert done.result == {"ok": True, "list": [None, 1.5]}
    assert done.finished_at is not None and done.finished_at >= ex.started_at
    assert await qm.get(ex.id) == done


async def test_an_error_makes_it_failed(qm: QueueManager) -> None:
    ex = await qm.enqueue("api.fail")
    failed = await qm.complete(ex.id, error="boom: it broke")
    assert (failed.status, failed.error, failed.result) == (Status.FAILED, "boom: it broke", None)
    stats = await qm.stats("api.fail")
    assert (stats.total_completed, stats.total_failed) == (1, 1)


async def test_stats_of_a_queue_never_used_are_zero_with_the_policy_limit(
    qm: QueueManager,
) -> None:
    await qm.set_policy("api.*", max_concurrent=4)
    stats = await qm.stats("api.unused", group="g")
    assert (stats.action, stats.group, stats.max_concurrent) == ("api.unused", "g", 4)
    assert (stats.queue_length, stats.active_count, stats.total_enqueued) == (0, 0, 0)
    assert stats.oldest_enqueued_at is None


async def test_snapshot_has_one_row_per_queue_and_only_changes_on_refresh(
    qm: QueueManager,
) -> None:
    await qm.enqueue("api.one")
    await qm.enqueue("api.two", group="x")
    await qm.enqueue("api.two", group="y")
    assert await qm.snapshot_stats() == []  # never refreshed since the template was made
    await qm.refresh_stats()
    snapshot = await qm.snapshot_stats()
    assert [(s.action, s.group) for s in snapshot] == [
        ("api.one", None),
        ("api.two", "x"),
        ("api.two", "y"),
    ]
    await qm.enqueue("api.three")
    assert len(await qm.snapshot_stats()) == 3
    assert len(await qm.live_stats()) == 4


async def test_a_waiter_whose_task_is_cancelled_gives_up_its_place(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("api.leave", max_concurrent=1)
    blocker = await qm.enqueue("api.leave")
    waiting = asyncio.create_task(qm.enqueue_and_wait("api.leave"))

    async def queued() -> bool:
        return any(r.status == "queued" for r in await fetch_rows(dsn, "api.leave"))

    await wait_until(queued, message="waiter queued")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)

    async def given_up() -> bool:  # the cancel runs in the background, the caller left
        return [r.status for r in await fetch_rows(dsn, "api.leave")] == ["active", "cancelled"]

    await wait_until(given_up, message="waiter's execution cancelled")
    # Its slot-to-be is not taken by a ghost: the next one starts after the blocker.
    await qm.complete(blocker.id)
    assert (await qm.enqueue("api.leave")).status is Status.ACTIVE


async def test_a_waiter_woken_by_its_executors_reaping_can_call_again_at_once(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("api.reaped", max_concurrent=1)
    await qm.enqueue("api.reaped")  # holds the only slot
    reaped_id = qm.executor_id

    async def wait_then_carry_on() -> Execution:
        with pytest.raises(ExecutionAbandoned):
            await qm.enqueue_and_wait("api.reaped")
        # Its very next call already runs as the new executor.
        return await qm.enqueue_and_wait("api.reaped.next")

    task = asyncio.create_task(wait_then_carry_on())

    async def queued() -> bool:
        return any(r.status == "queued" for r in await fetch_rows(dsn, "api.reaped"))

    await wait_until(queued, message="waiter queued")
    # What the others do when our lease runs out (fifoq.maintain's reaping).
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'lease expired'"
            " WHERE id = %s",
            (reaped_id,),
        )
        await conn.execute("SELECT fifoq.abandon_owned(%s)", (reaped_id,))
    carried_on = await task
    assert carried_on.status is Status.ACTIVE
    assert carried_on.owner == qm.executor_id != reaped_id


async def test_a_client_without_an_executor_works_and_leaves_no_executor_row(dsn: str) -> None:
    async def executors() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            row = await (await conn.execute("SELECT count(*) FROM fifoq.executors")).fetchone()
        assert row is not None
        return int(row[0])

    async with QueueManager.connect(dsn, register_executor=False) as client:
        await client.set_policy("api.client", max_concurrent=1)
        first = await client.enqueue("api.client", {"n": 1})
        second = await client.enqueue("api.client", {"n": 2})
        assert (first.status, second.status) == (Status.ACTIVE, Status.QUEUED)
        await client.complete(first.id, result="done")
        assert (await client.get(second.id)).status is Status.ACTIVE  # the slot moved on
        assert await client.cancel(second.id)
        assert (await client.stats("api.client")).total_cancelled == 1
        # What needs an executor is refused, and says why.
        for call in (
            lambda: client.enqueue_and_wait("api.client"),
            lambda: client.wait_started(first.id),
            lambda: client.claim(None, 1),
        ):
            with pytest.raises(FifoqError, match="register_executor=False"):
                await call()
        assert await executors() == 0
    assert await executors() == 0
