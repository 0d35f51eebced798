"""The eight scenarios of the original in-memory queue manager, against PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import pytest
from helpers import assert_fifo_and_limit, counts, fetch_rows, wait_until

from fifoq import (
    Execution,
    ExecutionCancelled,
    QueueFull,
    QueueManager,
    QueueStats,
    Status,
)


class SlotMeter:
    """Counts the executions the test holds at once, as seen by the client."""

    def __init__(self) -> None:
        self.current = 0
        self.highest = 0

    def enter(self) -> None:
        self.current += 1
        self.highest = max(self.highest, self.current)

    def leave(self) -> None:
        self.current -= 1


async def enqueue_in_order(qm: QueueManager, action: str, n: int) -> list[Execution]:
    """Enqueue ``n`` executions one after another (payload = index), so seq order is index order."""
    return [await qm.enqueue(action, {"i": i}) for i in range(n)]


async def test_ten_executions_at_limit_one_start_in_strict_order(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("s1.ten", max_concurrent=1)
    executions = await enqueue_in_order(qm, "s1.ten", 10)
    assert [e.status for e in executions] == [Status.ACTIVE] + [Status.QUEUED] * 9
    assert [e.seq for e in executions] == list(range(1, 11))
    started: list[int] = []
    meter = SlotMeter()

    async def run(index: int, execution: Execution) -> None:
        ex = await qm.wait_started(execution.id)
        meter.enter()
        started.append(index)
        await asyncio.sleep(0.001)  # hold the slot across a scheduling point
        meter.leave()
        await qm.complete(ex.id, result={"i": index})

    # Start the waiters in reverse so that the order they ask in cannot explain the result.
    await asyncio.gather(*(run(i, e) for i, e in reversed(list(enumerate(executions)))))
    assert started == list(range(10))
    assert meter.highest == 1
    rows = await fetch_rows(dsn, "s1.ten")
    assert [r.status for r in rows] == ["succeeded"] * 10
    assert_fifo_and_limit(rows, 1)


async def test_thousand_at_limit_five_counts_every_one(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("s2.thousand", max_concurrent=5)
    meter = SlotMeter()

    async def run(i: int) -> None:
        ex = await qm.enqueue_and_wait("s2.thousand", {"i": i})
        meter.enter()
        await asyncio.sleep(0)
        meter.leave()
        await qm.complete(ex.id)

    await asyncio.gather(*(run(i) for i in range(1000)))
    stats = await qm.stats("s2.thousand")
    assert (stats.total_enqueued, stats.total_completed) == (1000, 1000)
    assert (stats.queue_length, stats.active_count, stats.total_failed) == (0, 0, 0)
    assert meter.highest <= 5
    rows = await fetch_rows(dsn, "s2.thousand")
    assert len(rows) == 1000
    assert {r.status for r in rows} == {"succeeded"}
    assert_fifo_and_limit(rows, 5)


async def test_thirty_at_limit_three_with_uneven_completers_start_in_fifo_order(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("s3.thirty", max_concurrent=3)
    executions = await enqueue_in_order(qm, "s3.thirty", 30)
    started: asyncio.Queue[tuple[int, Execution]] = asyncio.Queue()
    start_order: list[int] = []
    done_by: dict[str, int] = {}

    async def wait(index: int, execution: Execution) -> None:
        ex = await qm.wait_started(execution.id)
        start_order.append(index)
        started.put_nowait((index, ex))

    async def completer(name: str, delay: float) -> None:
        while True:
            _, ex = await started.get()
            await asyncio.sleep(delay)
            await qm.complete(ex.id, result={"by": name})
            done_by[name] = done_by.get(name, 0) + 1
            started.task_done()

    waiters = [asyncio.create_task(wait(i, e)) for i, e in enumerate(executions)]
    completers = [
        asyncio.create_task(completer(name, delay))
        for name, delay in (("fast", 0.0), ("medium", 0.01), ("slow", 0.03))
    ]
    await asyncio.gather(*waiters)
    await started.join()
    for task in completers:
        task.cancel()
    await asyncio.gather(*completers, return_exceptions=True)

    assert sorted(start_order) == list(range(30))
    assert sum(done_by.values()) == 30
    assert set(done_by) == {"fast", "medium", "slow"}  # all three took part
    rows = await fetch_rows(dsn, "s3.thirty")
    assert {r.status for r in rows} == {"succeeded"}
    # The start order is read from the database: two admissions a moment
    # apart may wake their waiters in either order (one by its notification,
    # the other by the poll), but they were admitted in seq order.
    by_start = sorted(rows, key=lambda r: (r.started_at, r.seq))
    assert [r.seq for r in by_start] == [e.seq for e in executions]
    assert_fifo_and_limit(rows, 3)
    # Completion order differs from start order (uneven speeds), start order does not.
    finish_order = [r.seq for r in sorted(rows, key=lambda r: r.finished_at or r.enqueued_at)]
    assert finish_order != sorted(finish_order)


async def test_three_actions_at_limit_one_are_independent(qm: QueueManager, dsn: str) -> None:
    actions = ("s4.stuck", "s4.b", "s4.c")
    for action in actions:
        await qm.set_policy(action, max_concurrent=1)
    # s4.stuck: its first execution holds the only slot until the end.
    stuck = await enqueue_in_order(qm, "s4.stuck", 50)
    assert stuck[0].status is Status.ACTIVE

    async def drain(action: str) -> None:
        async def run(i: int) -> None:
            ex = await qm.enqueue_and_wait(action, {"i": i})
            await qm.complete(ex.id)

        await asyncio.gather(*(run(i) for i in range(50)))

    await asyncio.wait_for(asyncio.gather(drain("s4.b"), drain("s4.c")), timeout=60)
    blocked = await qm.stats("s4.stuck")
    assert (blocked.active_count, blocked.queue_length, blocked.total_completed) == (1, 49, 0)
    for action in ("s4.b", "s4.c"):
        stats = await qm.stats(action)
        assert (stats.total_enqueued, stats.total_completed) == (50, 50)

    # Unstick: the stuck queue then drains in its own order.
    async def finish(execution: Execution) -> None:
        ex = await qm.wait_started(execution.id)
        await qm.complete(ex.id)

    await asyncio.gather(*(finish(e) for e in stuck))
    rows = await fetch_rows(dsn)
    assert len(rows) == 150
    assert {r.status for r in rows} == {"succeeded"}
    assert_fifo_and_limit(rows, 1)


async def test_cancel_three_of_ten_waiting_tells_them_at_once_and_keeps_the_order(
    dsn: str,
) -> None:
    # A poll interval of 2 s: a cancelled waiter that raises within 0.3 s was
    # woken by its notification, not by the heartbeat poll.
    async with (
        QueueManager.connect(dsn, name="waiter", poll_interval=2.0, lease=5.0) as waiter,
        QueueManager.connect(dsn, name="operator") as operator,
    ):
        await waiter.set_policy("s5.cancel", max_concurrent=1)
        blocker = await waiter.enqueue("s5.cancel", {"i": "blocker"})
        assert blocker.status is Status.ACTIVE
        waiting = await enqueue_in_order(waiter, "s5.cancel", 10)
        started: list[int] = []
        outcome: dict[int, BaseException] = {}
        cancelled_at: dict[int, float] = {}
        raised_at: dict[int, float] = {}

        async def wait(index: int, execution: Execution) -> None:
            try:
                ex = await waiter.wait_started(execution.id)
            except ExecutionCancelled as exc:
                raised_at[index] = time.monotonic()
                outcome[index] = exc
                return
            started.append(index)
            await waiter.complete(ex.id)

        tasks = [asyncio.create_task(wait(i, e)) for i, e in enumerate(waiting)]

        # Each wait_started first makes its executor the owner (and reads the
        # row, still queued); once all ten are owned, only a notification (or
        # the 2 s poll) can tell a waiter about the cancellation.
        async def owned() -> bool:
            rows = await fetch_rows(dsn, "s5.cancel")
            return sum(r.owner == waiter.executor_id for r in rows) == 10

        await wait_until(owned, message="all ten waiting")
        positions = (2, 5, 8)  # 1-based places in the line
        for position in positions:
            index = position - 1
            assert await operator.cancel(waiting[index].id) is True
            cancelled_at[index] = time.monotonic()
        cancelled = {p - 1 for p in positions}
        await wait_until(
            lambda: set(raised_at) == cancelled,
            timeout=0.3,
            interval=0.005,
            message="cancelled waiters raised",
        )
        for index in cancelled:
            assert raised_at[index] - cancelled_at[index] < 0.3
            assert f"execution {waiting[index].id}" in str(outcome[index])
            assert "cancelled" in str(outcome[index])

        await operator.complete(blocker.id)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        assert started == [i for i in range(10) if i not in cancelled]
        rows = await fetch_rows(dsn, "s5.cancel")
        assert [r.status for r in rows] == [
            "cancelled" if (r.seq - 2) in cancelled else "succeeded" for r in rows
        ]
        assert_fifo_and_limit(rows, 1)
        stats = await operator.stats("s5.cancel")
        assert (stats.total_cancelled, stats.total_completed) == (3, 8)


def _comparable(stats: QueueStats) -> QueueStats:
    return dataclasses.replace(stats, last_updated=stats.last_updated.min)


async def test_refreshed_snapshot_equals_live_stats_during_a_run(qm: QueueManager) -> None:
    action = "s6.stats"
    await qm.set_policy(action, max_concurrent=5)

    async def assert_snapshot_matches() -> None:
        await qm.refresh_stats()
        snapshot = [s for s in await qm.snapshot_stats() if s.action == action]
        live = await qm.stats(action)
        assert [_comparable(s) for s in snapshot] == [_comparable(live)]

    executions = await enqueue_in_order(qm, action, 50)
    await assert_snapshot_matches()  # 5 active, 45 waiting
    live = await qm.stats(action)
    assert (live.active_count, live.queue_length, live.max_concurrent) == (5, 45, 5)
    assert live.oldest_enqueued_at == executions[5].enqueued_at

    # Finish 20 (two of them failed), cancel two waiting ones, then compare again.
    for i in range(20):
        ex = await qm.wait_started(executions[i].id)
        await qm.complete(ex.id, error="boom" if i in (3, 7) else None)
    assert await qm.cancel(executions[40].id)
    assert await qm.cancel(executions[45].id)
    await assert_snapshot_matches()
    live = await qm.stats(action)
    assert (live.total_enqueued, live.total_completed, live.total_failed) == (50, 20, 2)
    assert (live.total_cancelled, live.active_count, live.queue_length) == (2, 5, 23)

    for e in executions[20:]:
        if e.id in (executions[40].id, executions[45].id):
            continue
        ex = await qm.wait_started(e.id)
        await qm.complete(ex.id)
    await assert_snapshot_matches()
    live = await qm.stats(action)
    assert (live.total_completed, live.queue_length, live.active_count) == (48, 0, 0)
    assert live.oldest_enqueued_at is None


async def test_queue_full_at_max_queue_length_ten(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("s7.full", max_concurrent=1, max_queue_length=10)
    executions = await enqueue_in_order(qm, "s7.full", 11)  # 1 active + 10 waiting
    assert sum(e.status is Status.QUEUED for e in executions) == 10
    before = await counts(dsn)
    with pytest.raises(QueueFull) as info:
        await qm.enqueue("s7.full", {"i": 11})
    message = str(info.value)
    assert message == "queue full for action 's7.full': 10 of 10 waiting"
    assert await counts(dsn) == before  # nothing stored, no counter moved
    # A place that frees up can be taken again.
    assert await qm.cancel(executions[5].id)
    again = await qm.enqueue("s7.full", {"i": 12})
    assert again.status is Status.QUEUED
    assert again.seq == 12  # the refused enqueue used up no seq


@pytest.mark.slow
async def test_ten_thousand_at_limit_ten(dsn: str) -> None:
    total, clients = 10_000, 40
    async with QueueManager.connect(dsn, name="bulk", max_size=20) as qm:
        await qm.set_policy("s8.bulk", max_concurrent=10, max_queue_length=100_000)
        numbers = itertools.count()
        meter = SlotMeter()

        async def client() -> None:
            while next(numbers) < total:
                ex = await qm.enqueue_and_wait("s8.bulk")
                meter.enter()
                await asyncio.sleep(0)
                meter.leave()
                await qm.complete(ex.id)

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - began
        stats = await qm.stats("s8.bulk")
    assert (stats.total_enqueued, stats.total_completed) == (total, total)
    assert (stats.queue_length, stats.active_count) == (0, 0)
    assert meter.highest <= 10
    rows = await fetch_rows(dsn, "s8.bulk")
    assert len(rows) == total
    assert {r.status for r in rows} == {"succeeded"}
    assert_fifo_and_limit(rows, 10)
    print(f"10,000 at limit 10: {elapsed:.1f} s, {total / elapsed:.0f}/s")
