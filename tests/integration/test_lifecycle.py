"""Cancellation, queue timeouts and timestamps of single executions."""

from __future__ import annotations

import asyncio
import random
import re
import time
from datetime import timedelta

import pytest
from helpers import assert_fifo_and_limit, fetch_rows, wait_until

from fifoq import (
    ExecutionCancelled,
    FifoqError,
    QueueFull,
    QueueManager,
    QueueTimeout,
    Status,
    UnknownExecution,
)


async def test_cancel_queued_returns_true_and_frees_its_place(qm: QueueManager) -> None:
    await qm.set_policy("c.queued", max_concurrent=1)
    active = await qm.enqueue("c.queued")
    queued = await qm.enqueue("c.queued")
    assert await qm.cancel(queued.id) is True
    cancelled = await qm.get(queued.id)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.finished_at is not None and cancelled.started_at is None
    stats = await qm.stats("c.queued")
    assert (stats.queue_length, stats.active_count, stats.total_cancelled) == (0, 1, 1)
    # Cancelling did not free the active one's slot.
    assert (await qm.get(active.id)).status is Status.ACTIVE


async def test_cancel_active_returns_true_and_admits_the_next(qm: QueueManager) -> None:
    await qm.set_policy("c.active", max_concurrent=1)
    active = await qm.enqueue("c.active")
    nxt = await qm.enqueue("c.active")
    waiter = asyncio.create_task(qm.wait_started(nxt.id))
    assert await qm.cancel(active.id) is True
    started = await asyncio.wait_for(waiter, timeout=2)
    assert started.status is Status.ACTIVE
    assert (await qm.get(active.id)).status is Status.CANCELLED
    stats = await qm.stats("c.active")
    assert (stats.active_count, stats.queue_length, stats.total_cancelled) == (1, 0, 1)


async def test_cancel_finished_returns_false_and_changes_nothing(qm: QueueManager) -> None:
    done = await qm.enqueue("c.done")
    await qm.complete(done.id, result=1)
    assert await qm.cancel(done.id) is False
    assert (await qm.get(done.id)).status is Status.SUCCEEDED
    twice = await qm.enqueue("c.done")
    assert await qm.cancel(twice.id) is True
    assert await qm.cancel(twice.id) is False
    stats = await qm.stats("c.done")
    assert (stats.total_cancelled, stats.total_completed) == (1, 1)


async def test_cancel_unknown_raises(qm: QueueManager) -> None:
    with pytest.raises(UnknownExecution, match=r"^unknown execution 987654321$"):
        await qm.cancel(987654321)


async def test_waiter_on_a_cancelled_execution_raises_cancelled(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("c.wait", max_concurrent=1)
    await qm.enqueue("c.wait")
    waiting = asyncio.create_task(qm.enqueue_and_wait("c.wait"))

    async def queued_ids() -> list[int]:
        # The waiter's id is not known until it returns: read it from the table.
        return [r.id for r in await fetch_rows(dsn, "c.wait") if r.status == "queued"]

    ids = await wait_until(queued_ids, message="second execution queued")
    assert await qm.cancel(ids[0]) is True
    with pytest.raises(ExecutionCancelled, match=r"was cancelled"):
        await asyncio.wait_for(waiting, timeout=2)


async def test_database_times_out_an_unwatched_execution_and_frees_its_place(
    qm: QueueManager,
) -> None:
    await qm.set_policy("t.db", max_concurrent=1, max_queue_length=1, queue_timeout=0.5)
    blocker = await qm.enqueue("t.db")
    lonely = await qm.enqueue("t.db")  # bare enqueue: no owner, nobody waits on it
    assert lonely.owner is None and lonely.status is Status.QUEUED
    with pytest.raises(QueueFull):
        await qm.enqueue("t.db")
    began = time.monotonic()
    await wait_until(
        lambda: _status(qm, lonely.id, Status.TIMED_OUT), timeout=2.0, message="timed_out"
    )
    assert time.monotonic() - began < 1.5
    timed_out = await qm.get(lonely.id)
    assert timed_out.finished_at is not None
    waited = timed_out.finished_at - timed_out.enqueued_at
    assert timedelta(seconds=0.5) <= waited < timedelta(seconds=1.5)
    stats = await qm.stats("t.db")
    assert (stats.queue_length, stats.total_timed_out, stats.active_count) == (0, 1, 1)
    # Its place is free again, and finishing the blocker does not start it.
    again = await qm.enqueue("t.db")
    assert again.status is Status.QUEUED
    await qm.complete(blocker.id)
    assert (await qm.get(lonely.id)).status is Status.TIMED_OUT
    assert (await qm.get(again.id)).status is Status.ACTIVE


async def _status(qm: QueueManager, execution_id: int, status: Status) -> bool:
    return (await qm.get(execution_id)).status is status


async def test_database_timeout_wakes_an_owned_waiter_with_queue_timeout(
    qm: QueueManager,
) -> None:
    await qm.set_policy("t.owned", max_concurrent=1, queue_timeout=0.5)
    await qm.enqueue("t.owned")
    began = time.monotonic()
    with pytest.raises(QueueTimeout) as timed_out:
        await asyncio.wait_for(qm.enqueue_and_wait("t.owned"), timeout=3)
    assert 0.5 <= time.monotonic() - began < 1.5
    # The message names the action and how long it waited (SPEC §4).
    found = re.fullmatch(
        r"execution \d+ of action 't\.owned' timed out after waiting (\d+\.\d) s in its "
        r"queue \(queue_timeout\)",
        str(timed_out.value),
    )
    assert found is not None, str(timed_out.value)
    assert 0.5 <= float(found[1]) < 1.5
    assert (await qm.stats("t.owned")).total_timed_out == 1


async def test_wait_started_timeout_raises_and_marks_timed_out(qm: QueueManager) -> None:
    await qm.set_policy("t.client", max_concurrent=1, queue_timeout=None)
    await qm.enqueue("t.client")
    queued = await qm.enqueue("t.client")
    began = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        await qm.wait_started(queued.id, timeout=0.3)
    assert 0.3 <= time.monotonic() - began < 1.0
    assert str(info.value) == (
        f"execution {queued.id} of action 't.client' did not start within 0.3 s"
    )
    assert (await qm.get(queued.id)).status is Status.TIMED_OUT
    stats = await qm.stats("t.client")
    assert (stats.queue_length, stats.total_timed_out) == (0, 1)
    with pytest.raises(QueueTimeout):
        await qm.enqueue_and_wait("t.client", timeout=0.2)
    assert (await qm.stats("t.client")).total_timed_out == 2


async def test_started_at_never_decreases_as_seq_grows(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("ts.order", max_concurrent=3)
    rng = random.Random(7)

    async def run(i: int) -> None:
        ex = await qm.enqueue_and_wait("ts.order", {"i": i})
        await asyncio.sleep(rng.random() / 200)  # uneven run times: completions reorder
        await qm.complete(ex.id)

    await asyncio.gather(*(run(i) for i in range(60)))
    rows = await fetch_rows(dsn, "ts.order")
    started = [r.started_at for r in sorted(rows, key=lambda r: r.seq)]
    assert all(s is not None for s in started)
    assert started == sorted(started)  # type: ignore[type-var]
    assert_fifo_and_limit(rows, 3)


@pytest.mark.parametrize("register", [True, False], ids=["executor", "plain client"])
async def test_a_call_after_close_raises_a_fifoq_error(dsn: str, register: bool) -> None:
    # Not psycopg_pool's PoolClosed: a caller catching FifoqError catches it.
    async with QueueManager.connect(dsn, register_executor=register) as qm:
        ex = await qm.enqueue("life.closed")
    for call in (
        lambda: qm.get(ex.id),
        lambda: qm.enqueue("life.closed"),
        lambda: qm.stats("life.closed"),
        lambda: qm.cancel(ex.id),
    ):
        with pytest.raises(FifoqError, match="closed"):
            await call()
