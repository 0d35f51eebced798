"""An executor process for the SIGKILL tests: takes tickets, runs executions until none are left.

Usage: python kill_child.py DSN TARGET TASKS SEED

Each of TASKS concurrent callers repeatedly takes a ticket from the sequence
``public.fault_tickets`` and, while the ticket is at most TARGET, runs one
execution: tickets divisible by 3 are bare enqueues of ``kill.w`` for the
``fifoq worker`` processes; the others go through ``enqueue_and_wait`` and
``complete`` on ``kill.a`` or ``kill.b``. The parent kills this process at
random moments; a child that is left alone exits 0 when the tickets run out.
"""

from __future__ import annotations

import asyncio
import random
import sys

import psycopg

from fifoq import ExecutionAbandoned, ExecutorGone, QueueManager

LEASE = 1.0
POLL = 0.2


async def main(dsn: str, target: int, tasks: int, seed: int) -> None:
    rng = random.Random(seed)
    stats = {"completed": 0, "bare": 0, "lost": 0}
    async with (
        QueueManager.connect(dsn, name=f"kill-child-{seed}", lease=LEASE, poll_interval=POLL) as qm,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as tickets,
    ):
        lock = asyncio.Lock()  # one connection for tickets, shared by the callers
        print(f"ready {qm.executor_id}", flush=True)

        async def take() -> int:
            async with lock:
                cur = await tickets.execute("SELECT nextval('public.fault_tickets')")
                row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        async def caller() -> None:
            while (ticket := await take()) <= target:
                if ticket % 3 == 0:
                    await qm.enqueue("kill.w", {"t": ticket})
                    stats["bare"] += 1
                    continue
                action = "kill.a" if ticket % 3 == 1 else "kill.b"
                try:
                    execution = await qm.enqueue_and_wait(action, {"t": ticket})
                    if rng.random() < 0.3:
                        await asyncio.sleep(rng.random() / 200)  # some "work"
                    await qm.complete(execution.id, result={"t": ticket})
                    stats["completed"] += 1
                except (ExecutionAbandoned, ExecutorGone):
                    # Reaped while alive (a heartbeat later than the lease under
                    # load): the execution is terminal; the parent counts these.
                    stats["lost"] += 1

        await asyncio.gather(*(caller() for _ in range(tasks)))
    print(f"done {stats['completed']} {stats['bare']} {stats['lost']}", flush=True)


if __name__ == "__main__":
    dsn, target, tasks, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(dsn, target, tasks, seed))
