"""Executors that die or close: what they owned becomes abandoned and the slots move on."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from helpers import assert_fifo_and_limit, executor_row, fetch_rows, wait_until
from racers import SPAWN, hold_a_slot_then_hang, start

from fifoq import ExecutionAbandoned, QueueManager, Status

LEASE = 1.0  # of the process that gets killed (see racers.hold_a_slot_then_hang)


async def test_sigkilled_process_slot_goes_to_the_next_waiter_within_the_lease(dsn: str) -> None:
    async with QueueManager.connect(dsn, name="survivor", poll_interval=0.2) as qm:
        await qm.set_policy("crash.kill", max_concurrent=1)
        holding = SPAWN.Event()
        doomed = start(hold_a_slot_then_hang, dsn, "crash.kill", holding)
        try:
            await wait_until(holding.is_set, timeout=30, message="the doomed process holds a slot")
            waiter = asyncio.create_task(qm.enqueue_and_wait("crash.kill", {"who": "survivor"}))

            async def three_in_line() -> bool:
                return len(await fetch_rows(dsn, "crash.kill")) == 3

            await wait_until(three_in_line, message="survivor queued behind the doomed process")
            assert not waiter.done()
            assert doomed.pid is not None
            os.kill(doomed.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            started = await asyncio.wait_for(waiter, timeout=LEASE + 10)
            recovered_in = time.monotonic() - killed_at
        finally:
            doomed.kill()
            doomed.join(10)
        assert doomed.exitcode == -signal.SIGKILL
        assert recovered_in < LEASE + 3, f"slot came back after {recovered_in:.1f} s"
        assert started.status is Status.ACTIVE
        rows = await fetch_rows(dsn, "crash.kill")
        # The doomed process held seq 1 (active) and owned seq 2 (waiting).
        assert [r.status for r in rows] == ["abandoned", "abandoned", "active"]
        dead_owner = rows[0].owner
        assert dead_owner is not None and rows[1].owner == dead_owner
        ended_at, reason = await executor_row(dsn, dead_owner)
        assert ended_at is not None and reason == "lease expired"
        stats = await qm.stats("crash.kill")
        assert (stats.total_abandoned, stats.active_count, stats.queue_length) == (2, 1, 0)
        assert_fifo_and_limit(rows, 1)
        await qm.complete(started.id)
    print(f"slot recovered {recovered_in:.2f} s after SIGKILL (lease {LEASE} s)")


async def test_clean_close_abandons_what_the_executor_still_owns(dsn: str) -> None:
    async with QueueManager.connect(dsn, name="stays") as stays:
        await stays.set_policy("crash.close", max_concurrent=1)
        async with QueueManager.connect(dsn, name="leaves") as leaves:

            async def in_line(n: int) -> None:
                async def reached() -> bool:
                    return len(await fetch_rows(dsn, "crash.close")) == n

                await wait_until(reached, message=f"{n} executions in line")

            held = await leaves.enqueue_and_wait("crash.close")
            own_waiter = asyncio.create_task(leaves.enqueue_and_wait("crash.close"))
            await in_line(2)
            unowned = await stays.enqueue("crash.close")  # bare enqueue: nobody owns it
            other_waiter = asyncio.create_task(stays.enqueue_and_wait("crash.close"))
            await in_line(4)
            leaves_id = leaves.executor_id
        # Closed: its active and its waiting execution are abandoned at once.
        with pytest.raises(ExecutionAbandoned, match=r"abandoned"):
            await asyncio.wait_for(own_waiter, timeout=2)
        rows = await fetch_rows(dsn, "crash.close")
        assert [r.status for r in rows[:2]] == ["abandoned", "abandoned"]
        assert rows[0].id == held.id
        ended_at, reason = await executor_row(dsn, leaves_id)
        assert ended_at is not None and reason == "closed"
        # The freed slot went to the next in line: the unowned execution, untouched by the close.
        assert (await stays.get(unowned.id)).status is Status.ACTIVE
        await stays.complete(unowned.id)
        started = await asyncio.wait_for(other_waiter, timeout=2)
        assert started.status is Status.ACTIVE
        assert_fifo_and_limit(await fetch_rows(dsn, "crash.close"), 1)
