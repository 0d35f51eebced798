"""Retention: fifoq.purge deletes old finished executions and ended executors, nothing else."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from helpers import counts

from fifoq import InvalidInput, QueueManager, Status, UnknownExecution


async def age(dsn: str, sql: str, *params: object) -> None:
    """Move timestamps into the past (the only way a test can make rows old)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql, params)  # type: ignore[arg-type]


async def test_purge_deletes_only_old_finished_executions_and_keeps_the_totals(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("purge.a", max_concurrent=1)
    done = [await qm.enqueue("purge.a") for _ in range(3)]
    for execution in done:
        await qm.complete(execution.id)  # each completion admits the next
    active = await qm.enqueue("purge.a")
    queued = await qm.enqueue("purge.a")
    recent = await qm.enqueue("purge.b")
    await qm.complete(recent.id)
    # Everything is a day old; only `recent` finished just now.
    await age(
        dsn,
        "UPDATE fifoq.executions SET enqueued_at = enqueued_at - interval '1 day',"
        " started_at = started_at - interval '1 day', finished_at = finished_at - interval '1 day'"
        " WHERE id <> %s",
        recent.id,
    )
    before = await qm.stats("purge.a")

    first = await qm.purge(timedelta(hours=1), limit=2)  # oldest first, two at a time
    second = await qm.purge(3600.0, limit=2)
    assert (first.executions, second.executions) == (2, 1)

    for execution in done:
        with pytest.raises(UnknownExecution):
            await qm.get(execution.id)
    assert (await qm.get(active.id)).status is Status.ACTIVE
    assert (await qm.get(queued.id)).status is Status.QUEUED
    assert (await qm.get(recent.id)).status is Status.SUCCEEDED
    after = await qm.stats("purge.a")
    assert (
        (after.total_completed, after.total_enqueued, after.queue_length)
        == (
            before.total_completed,
            before.total_enqueued,
            before.queue_length,
        )
        == (3, 5, 1)
    )
    # The queue goes on: the waiting one starts when the slot frees.
    await qm.complete(active.id)
    assert (await qm.get(queued.id)).status is Status.ACTIVE


async def test_purge_deletes_ended_executors_that_own_nothing_live(
    qm: QueueManager, dsn: str
) -> None:
    async with QueueManager.connect(dsn, name="short-lived") as other:
        gone_id = other.executor_id
    async with QueueManager.connect(dsn, name="keeps-one") as holder:
        kept_id = holder.executor_id
        waiting = await qm.enqueue("purge.e")  # active, nobody owns it
        await holder.wait_started(waiting.id)  # now holder owns it
    # Both ended an hour ago; holder's execution was abandoned on close.
    await age(
        dsn,
        "UPDATE fifoq.executors SET ended_at = ended_at - interval '1 hour' WHERE id = ANY(%s)",
        [gone_id, kept_id],
    )
    purged = await qm.purge(timedelta(minutes=30))
    assert purged.executors == 2
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM fifoq.executors WHERE id = ANY(%s)", ([gone_id, kept_id],)
        )
        assert await cur.fetchone() == (0,)
    # The connected executor itself is never purged.
    assert (await qm.purge(0)).executors == 0


async def test_purge_keeps_executors_that_ended_less_than_ten_minutes_ago(
    qm: QueueManager, dsn: str
) -> None:
    # fifoq.maintain's sweep looks at executors that ended in the last ten
    # minutes (an execution given to one as it was reaped): purge(0) must
    # leave them for it, and take them once they are older.
    async with QueueManager.connect(dsn, name="just-ended") as other:
        ended_id = other.executor_id

    async def exists() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute("SELECT 1 FROM fifoq.executors WHERE id = %s", (ended_id,))
            return await cur.fetchone() is not None

    assert (await qm.purge(0)).executors == 0
    assert await exists()
    await age(
        dsn,
        "UPDATE fifoq.executors SET ended_at = ended_at - interval '11 minutes' WHERE id = %s",
        ended_id,
    )
    assert (await qm.purge(0)).executors == 1
    assert not await exists()


@pytest.mark.parametrize(
    ("older_than", "limit", "needle"),
    [
        (-1, 10, "must not be negative"),
        (timedelta(seconds=-5), 10, "must not be negative"),
        ("7d", 10, "timedelta or seconds"),
        (float("nan"), 10, "finite"),
        (60, 0, "limit must be an integer"),
        (60, 2**31, "limit must be an integer"),
    ],
)
async def test_bad_purge_arguments_are_refused_and_delete_nothing(
    qm: QueueManager, dsn: str, older_than: object, limit: int, needle: str
) -> None:
    execution = await qm.enqueue("purge.bad")
    await qm.complete(execution.id)
    before = await counts(dsn)
    with pytest.raises(InvalidInput, match=needle):
        await qm.purge(older_than, limit=limit)  # type: ignore[arg-type]
    assert await counts(dsn) == before


async def test_purge_from_sql_checks_its_arguments(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for args in (("-1 day", 10), ("1 day", 0)):
            with pytest.raises(psycopg.Error, match="invalid"):
                await conn.execute("SELECT fifoq.purge(%s::interval, %s)", args)
        # A cutoff far in the past is fine (nothing that old), not an overflow.
        cur = await conn.execute("SELECT fifoq.purge('1000000 years', 10)")
        assert await cur.fetchone() == ({"executions": 0, "executors": 0},)
