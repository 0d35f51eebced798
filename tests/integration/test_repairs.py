"""What happens at once, and what fifoq.maintain repairs: slots, snapshots, early news."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from fifoq import QueueManager, Status


async def test_cancelling_an_active_execution_admits_the_next_at_once(dsn: str) -> None:
    # A plain client runs no maintenance pass, so nothing else could admit it:
    # the cancel itself hands the slot on, in the same transaction.
    async with QueueManager.connect(dsn, register_executor=False) as client:
        await client.set_policy("rp.cancel", max_concurrent=1)
        active = await client.enqueue("rp.cancel")
        waiting = await client.enqueue("rp.cancel")
        assert active.status is Status.ACTIVE and waiting.status is Status.QUEUED
        assert await client.cancel(active.id)
        assert (await client.get(waiting.id)).status is Status.ACTIVE


async def _snapshot_file(conn: psycopg.AsyncConnection[object]) -> int:
    cur = await conn.execute("SELECT pg_relation_filenode('fifoq.queue_stats')")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_refreshing_the_snapshot_does_not_wait_for_its_readers(
    qm: QueueManager, dsn: str
) -> None:
    # A rebuild (refresh_stats(true), the API's) needs an ACCESS EXCLUSIVE
    # lock and would wait for every open transaction that read the snapshot:
    # after 20 ms it refreshes CONCURRENTLY instead (sql/0023), beside the
    # reader.
    await qm.enqueue("rp.snapshot")
    await qm.refresh_stats()
    async with await psycopg.AsyncConnection.connect(dsn) as reader:
        await reader.execute("SELECT * FROM fifoq.queue_stats")  # its transaction stays open
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as refresher:
            before = await _snapshot_file(refresher)
            await qm.enqueue("rp.snapshot")
            # No lock_timeout of the caller's: a refresh that waited for the
            # reader would wait for good.
            async with asyncio.timeout(30):
                await refresher.execute("SELECT fifoq.refresh_stats(true)")
            # Refreshed in place (CONCURRENTLY keeps the view's files), and
            # the caller's lock_timeout is its own again.
            assert await _snapshot_file(refresher) == before
            cur = await refresher.execute("SHOW lock_timeout")
            assert await cur.fetchone() == ("0",)
            cur = await refresher.execute("SELECT total_enqueued FROM fifoq.queue_stats")
            assert await cur.fetchone() == (2,)
        cur = await reader.execute("SELECT count(*) FROM fifoq.queue_stats")
        assert await cur.fetchone() == (1,)


async def test_refreshing_an_unread_snapshot_rebuilds_it(qm: QueueManager, dsn: str) -> None:
    # Nobody holds the snapshot: it is rebuilt (new files), not diffed
    # CONCURRENTLY, which costs 2-6x as much (sql/0023); the caller's
    # lock_timeout, changed for the attempt, is restored.
    await qm.enqueue("rp.rebuild")
    await qm.refresh_stats()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        before = await _snapshot_file(conn)
        await qm.enqueue("rp.rebuild")
        async with conn.transaction():  # a caller's transaction keeps its setting
            await conn.execute("SET LOCAL lock_timeout = '3s'")
            await conn.execute("SELECT fifoq.refresh_stats(true)")
            cur = await conn.execute("SHOW lock_timeout")
            assert await cur.fetchone() == ("3s",)
        rebuilt = await _snapshot_file(conn)
        assert rebuilt != before
        await qm.refresh_stats()  # the API's call rebuilds
        assert await _snapshot_file(conn) != rebuilt
    (stats,) = await qm.snapshot_stats()
    assert (stats.action, stats.queue_length, stats.total_enqueued) == ("rp.rebuild", 0, 2)


async def test_a_plain_sql_refresh_keeps_readers_reading_until_its_caller_commits(
    qm: QueueManager, dsn: str
) -> None:
    # Called without true, as from SQL inside a longer transaction, the
    # refresh is CONCURRENTLY: a rebuild's lock would last until the caller
    # commits, and readers would wait that long (sql/0023).
    await qm.enqueue("rp.inside")
    await qm.refresh_stats()
    async with (
        await psycopg.AsyncConnection.connect(dsn) as caller,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as reader,
    ):
        before = await _snapshot_file(reader)
        await caller.execute("SELECT fifoq.refresh_stats()")  # its transaction stays open
        async with asyncio.timeout(30):
            cur = await reader.execute("SELECT count(*) FROM fifoq.queue_stats")
            assert await cur.fetchone() == (1,)
        assert await _snapshot_file(reader) == before
        await caller.commit()


async def test_the_snapshot_has_no_toast_table_and_holds_the_longest_names(
    qm: QueueManager, dsn: str
) -> None:
    # Its names are stored inline (sql/0027): a TOAST table, with an index of
    # its own, was built anew by every rebuild for nothing. The longest names
    # (255 characters of 4 bytes) still fit, rebuilt and CONCURRENTLY.
    action, group = "\U0001f680" * 255, "\U0001f4e6" * 255
    await qm.enqueue(action, group=group)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for refresh in ("SELECT fifoq.refresh_stats(true)", "SELECT fifoq.refresh_stats()"):
            await conn.execute(refresh)  # type: ignore[arg-type]
            cur = await conn.execute(
                "SELECT reltoastrelid = 0 FROM pg_class WHERE oid = 'fifoq.queue_stats'::regclass"
            )
            assert await cur.fetchone() == (True,), f"a TOAST table after {refresh}"
    (stats,) = await qm.snapshot_stats()
    assert (stats.action, stats.group, stats.total_enqueued) == (action, group, 1)


async def test_maintain_abandons_what_an_already_ended_executor_still_owns(dsn: str) -> None:
    # An execution given to an executor in the instant it was reaped (the
    # owner check reads the executor row without a lock) would hold its slot
    # for good: the maintenance pass sweeps recently ended executors.
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT fifoq.register_executor('late', 'h', 1, 5)")
        row = await cur.fetchone()
        assert row is not None
        executor = row[0]
        await conn.execute("SELECT fifoq.set_policy('rp.sweep', 1)")
        cur = await conn.execute(
            "SELECT id FROM fifoq.enqueue('rp.sweep', NULL, NULL, %s)", (executor,)
        )
        owned = await cur.fetchone()
        cur = await conn.execute("SELECT id FROM fifoq.enqueue('rp.sweep')")
        behind = await cur.fetchone()
        assert owned is not None and behind is not None
        # Ended, as a reaper that ran just before the insert left it.
        await conn.execute(
            "UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'test'"
            " WHERE id = %s",
            (executor,),
        )
        await conn.execute("SELECT fifoq.maintain()")
        cur = await conn.execute(
            "SELECT id, status::text FROM fifoq.executions WHERE id = ANY(%s) ORDER BY id",
            ([owned[0], behind[0]],),
        )
        assert await cur.fetchall() == [(owned[0], "abandoned"), (behind[0], "active")]


@pytest.mark.parametrize(
    "status", [Status.CANCELLED, Status.ABANDONED, Status.TIMED_OUT, Status.ACTIVE]
)
async def test_news_that_arrives_before_the_waiter_subscribes_is_kept_for_it(
    qm: QueueManager, status: Status
) -> None:
    # The notification of an admission (or cancel) can arrive between the
    # statement that made this executor the owner and the subscription of
    # its waiter; kept, it wakes the waiter at once instead of a poll later.
    qm._on_status(424242, status, None)
    heard: list[Status] = []
    unsubscribe = qm.watch_status(424242, lambda new, _at: heard.append(new))
    unsubscribe()
    assert heard == [status]
