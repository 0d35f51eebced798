"""Programs the concurrency tests run in spawned OS processes, each with its own executor."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import psycopg

from fifoq import QueueManager

SPAWN = multiprocessing.get_context("spawn")


def start(target: Any, *args: Any) -> multiprocessing.process.BaseProcess:
    """Start ``target(*args)`` in a new interpreter (spawn: no state shared with pytest)."""
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def join_all(processes: list[multiprocessing.process.BaseProcess], timeout: float) -> None:
    """Wait for every process; fail if one is still running or exited with an error."""
    for process in processes:
        process.join(timeout)
    stuck = [p.pid for p in processes if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert not stuck, f"processes {stuck} did not finish within {timeout} s"
    codes = [p.exitcode for p in processes]
    assert codes == [0] * len(processes), f"exit codes {codes}"


def enqueue_wait_complete(dsn: str, action: str, n: int, start_line: Barrier, seed: int) -> None:
    """Run ``n`` executions of ``action`` one after another: enqueue_and_wait, then complete."""

    async def main() -> None:
        rng = random.Random(seed)
        async with QueueManager.connect(dsn, name=f"racer-{seed}", min_size=2) as qm:
            # Everyone connected first, then all race from the same instant.
            await asyncio.to_thread(start_line.wait, 60)

            async def one_by_one(count: int) -> None:
                for _ in range(count):
                    ex = await qm.enqueue_and_wait(action)
                    if rng.random() < 0.5:
                        await asyncio.sleep(rng.random() / 500)  # up to 2 ms of "work"
                    await qm.complete(ex.id)

            # Two callers per process: the executor serves several waiters at once.
            await asyncio.gather(one_by_one(n // 2), one_by_one(n - n // 2))

    asyncio.run(main())


def enqueue_in_transactions(dsn: str, action: str, n: int, start_line: Barrier, seed: int) -> None:
    """Enqueue ``n`` executions, each in its own transaction held open a little after it."""

    async def main() -> None:
        rng = random.Random(seed)
        async with (
            QueueManager.connect(dsn, name=f"tx-{seed}") as qm,
            await psycopg.AsyncConnection.connect(dsn) as conn,
        ):
            # Everyone connected first, then all race from the same instant.
            await asyncio.to_thread(start_line.wait, 60)
            for _ in range(n):
                async with conn.transaction():
                    await qm.enqueue(action, {"by": seed}, conn=conn)
                    # A commit that comes later than the insert: the window in
                    # which a sequence-based design lets a later seq be seen first.
                    await asyncio.sleep(rng.random() / 1000)

    asyncio.run(main())


def hold_a_slot_then_hang(dsn: str, action: str, holding: Event) -> None:
    """Take a slot and own a waiting execution behind it, then hang until killed."""

    async def main() -> None:
        async with QueueManager.connect(dsn, name="doomed", lease=1.0, poll_interval=0.2) as qm:
            await qm.enqueue_and_wait(action)
            second = await qm.enqueue(action)
            waiter = asyncio.create_task(qm.wait_started(second.id))
            deadline = time.monotonic() + 30
            while (await qm.get(second.id)).owner != qm.executor_id:
                if time.monotonic() > deadline:
                    raise TimeoutError("wait_started did not take ownership within 30 s")
                await asyncio.sleep(0.01)  # poll interval of a condition with a deadline
            holding.set()
            await waiter  # never returns: the slot ahead is ours and we never complete it

    asyncio.run(main())
