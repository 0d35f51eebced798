"""Programs the concurrency tests run in spawned OS processes, each with its own executor."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import psycopg

from fifoq import Outcome, QueueManager

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


def enqueue_batches(
    dsn: str, action: str, batches: int, start_line: Barrier, seed: int, groups: str
) -> None:
    """Enqueue ``batches`` batches of 1 to 8 payloads with enqueue_many, spread over ``groups``.

    Each payload names its producer, batch, index in the batch and the batch's
    size, so the test can find every batch again and check it is whole.
    """

    async def main() -> None:
        rng = random.Random(seed)
        async with QueueManager.connect(dsn, name=f"batcher-{seed}") as qm:
            await asyncio.to_thread(start_line.wait, 60)
            for batch in range(batches):
                size = rng.randint(1, 8)
                payloads = [
                    {"by": seed, "batch": batch, "i": i, "size": size, "g": rng.choice(groups)}
                    for i in range(size)
                ]
                await qm.enqueue_many(action, payloads)
                await asyncio.sleep(rng.random() / 300)  # pace: race the completions throughout

    asyncio.run(main())


def enqueue_singly(
    dsn: str, action: str, n: int, start_line: Barrier, seed: int, groups: str
) -> None:
    """Enqueue ``n`` executions one by one with enqueue (a batch of one, in the payloads' terms)."""

    async def main() -> None:
        rng = random.Random(seed)
        async with QueueManager.connect(dsn, name=f"single-{seed}") as qm:
            await asyncio.to_thread(start_line.wait, 60)
            for j in range(n):
                payload = {"by": seed, "batch": j, "i": 0, "size": 1, "g": rng.choice(groups)}
                await qm.enqueue(action, payload)
                if rng.random() < 0.5:
                    await asyncio.sleep(rng.random() / 1000)

    asyncio.run(main())


def claim_and_complete_many(
    dsn: str, action: str, producers_done: Event, start_line: Barrier, seed: int
) -> None:
    """Claim admitted executions and finish them with complete_many (now and then one by one).

    Stops once the producers are done and nothing of ``action`` is left
    queued or active; fails after 60 s.
    """

    async def unfinished(conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            "SELECT count(*) FROM fifoq.execution_details"
            " WHERE action = %s AND status IN ('queued', 'active')",
            (action,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def main() -> None:
        rng = random.Random(seed)
        async with (
            QueueManager.connect(dsn, name=f"completer-{seed}", min_size=2) as qm,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        ):
            await asyncio.to_thread(start_line.wait, 60)
            deadline = time.monotonic() + 60
            while True:
                claimed = await qm.claim([action], rng.randint(1, 4))
                if claimed:
                    if rng.random() < 0.5:
                        await asyncio.sleep(rng.random() / 500)  # up to 2 ms of "work"
                    if len(claimed) == 1 and rng.random() < 0.3:
                        await qm.complete(claimed[0].id, result={"by": seed})
                    else:
                        rng.shuffle(claimed)  # completion order is not admission order
                        await qm.complete_many(
                            [Outcome(e.id, result={"by": seed}) for e in claimed]
                        )
                    continue
                if producers_done.is_set() and not await unfinished(conn):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"work of {action} left after 60 s")
                await asyncio.sleep(0.002)  # nothing admitted yet: poll again

    asyncio.run(main())
