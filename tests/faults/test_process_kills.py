"""SIGKILL of executor and `fifoq worker` processes at random moments of a multi-process run.

Three executor processes (``kill_child.py``, four callers each, lease 1 s) run
``enqueue_and_wait`` + ``complete`` on two actions and bare enqueues for two
``fifoq worker`` processes; the test SIGKILLs one of them every few hundred
milliseconds and starts a replacement. Afterwards, from the database: every
execution is terminal, the counters agree with the rows, no queue ever had
more active than its limit or started out of seq order, and every killed
executor was reaped -- its slots freed -- within its lease plus 5 s.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import assert_fifo_and_limit, fetch_rows, wait_until

from fifoq import QueueManager

HERE = Path(__file__).resolve().parent
LIMITS = {"kill.a": 2, "kill.b": 3, "kill.w": 2}
CHILD_LEASE = 1.0
WORKER_LEASE = 5.0  # `fifoq worker` uses the default lease
RECOVERY_BOUND = 5.0  # SPEC §3.5: slots freed within 5 s after the lease


@dataclass
class Proc:
    """A child process and what it is."""

    kind: str  # "executor" or "worker"
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Run:
    """Book-keeping of one kill run."""

    dsn: str
    tmp: Path
    rng: random.Random
    target: int
    live: list[Proc] = field(default_factory=list)
    kills: list[tuple[str, int, datetime]] = field(default_factory=list)  # kind, pid, when
    started: int = 0

    def spawn(self, kind: str) -> Proc:
        self.started += 1
        log = self.tmp / f"{kind}-{self.started}.log"
        if kind == "executor":
            args = [sys.executable, str(HERE / "kill_child.py"), self.dsn, str(self.target), "4"]
            args.append(str(self.started))
        else:
            fifoq_bin = str(Path(sys.executable).parent / "fifoq")
            args = [fifoq_bin, "worker", "fault_apps:app", "--dsn", self.dsn, "--grace", "0"]
            args += ["--concurrency", "4", "--log-level", "warning"]
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                args, cwd=HERE, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(kind, popen, log)
        self.live.append(proc)
        return proc

    async def kill_one(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Only processes that registered their executor: a kill during start-up
        # tests nothing the database could see.
        cur = await conn.execute("SELECT pid FROM fifoq.executors WHERE ended_at IS NULL")
        registered = {pid for (pid,) in await cur.fetchall()}
        running = [p for p in self.live if p.popen.poll() is None and p.popen.pid in registered]
        if not running:
            return
        victim = self.rng.choice(running)
        cur = await conn.execute("SELECT clock_timestamp()")
        row = await cur.fetchone()
        assert row is not None
        victim.popen.kill()
        victim.popen.wait()
        self.live.remove(victim)
        self.kills.append((victim.kind, victim.popen.pid, row[0]))

    def stop_all(self) -> None:
        for proc in self.live:
            if proc.popen.poll() is None:
                proc.popen.kill()
            proc.popen.wait()


async def scalar(conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def kill_run(dsn: str, tmp: Path, *, target: int, seed: int, kill_every: float) -> None:
    rng = random.Random(seed)
    run = Run(dsn, tmp, rng, target)
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        # The survivor: its maintenance passes reap the killed executors.
        QueueManager.connect(dsn, name="survivor", lease=CHILD_LEASE, poll_interval=0.2) as qm,
    ):
        await conn.execute("CREATE SEQUENCE public.fault_tickets")
        for action, limit in LIMITS.items():
            await qm.set_policy(action, max_concurrent=limit)
        try:
            for _ in range(3):
                run.spawn("executor")
            for _ in range(2):
                run.spawn("worker")
            deadline = time.monotonic() + 60 + target * 0.05
            # Kill until the tickets are gone, replacing every victim.
            while await scalar(conn, "SELECT last_value FROM public.fault_tickets") < target:
                assert time.monotonic() < deadline, "the run did not finish in time"
                await asyncio.sleep(rng.uniform(0.3, 1.7) * kill_every)
                before = len(run.kills)
                await run.kill_one(conn)
                if len(run.kills) > before:
                    run.spawn(run.kills[-1][0])
                for proc in list(run.live):
                    code = proc.popen.poll()
                    if code is not None:
                        assert code == 0, f"{proc.kind} exited {code}:\n{proc.log.read_text()}"
                        run.live.remove(proc)
                # Keep three executors at work while tickets remain.
                while sum(p.kind == "executor" for p in run.live) < 3:
                    run.spawn("executor")
            # The executors left finish on their own; the workers drain kill.w.
            for proc in [p for p in run.live if p.kind == "executor"]:
                code = await asyncio.to_thread(proc.popen.wait, 60)
                assert code == 0, proc.log.read_text()
                run.live.remove(proc)
            await wait_until(
                lambda: scalar(
                    conn,
                    "SELECT count(*) = 0 FROM fifoq.execution_details"
                    " WHERE status IN ('queued', 'active') AND (action = 'kill.w' OR owner IN"
                    " (SELECT id FROM fifoq.executors WHERE ended_at IS NULL))",
                ),
                timeout=60,
                interval=0.1,
                message="live executors finished their work",
            )
            # What the killed ones held is reaped by the survivor within lease + 5 s.
            await wait_until(
                lambda: scalar(
                    conn,
                    "SELECT count(*) = 0 FROM fifoq.executions"
                    " WHERE status IN ('queued', 'active')",
                ),
                timeout=WORKER_LEASE + RECOVERY_BOUND + 5,
                interval=0.1,
                message="every execution terminal",
            )
        finally:
            run.stop_all()

        await check_accounts(conn, dsn, run)


async def reaped(conn: psycopg.AsyncConnection[Any], executor_id: int) -> Any:
    """(ended_at, end_reason) of an executor once it ended, else None."""
    cur = await conn.execute(
        "SELECT ended_at, end_reason FROM fifoq.executors WHERE id = %s AND ended_at IS NOT NULL",
        (executor_id,),
    )
    return await cur.fetchone()


async def check_accounts(conn: psycopg.AsyncConnection[Any], dsn: str, run: Run) -> None:
    # Every ticket that became an execution did so once.
    assert await scalar(
        conn,
        "SELECT count(*) = count(DISTINCT payload->>'t') FROM fifoq.executions",
    )
    # Counters equal the rows (nothing freed twice, nothing lost).
    cur = await conn.execute(
        """
        SELECT q.action, q.queued_count, q.active_count, q.total_enqueued,
               q.total_succeeded, q.total_failed, q.total_cancelled, q.total_timed_out,
               q.total_abandoned,
               count(e.*), count(e.*) FILTER (WHERE e.status = 'succeeded'),
               count(e.*) FILTER (WHERE e.status = 'failed'),
               count(e.*) FILTER (WHERE e.status = 'abandoned')
        FROM fifoq.queues q LEFT JOIN fifoq.executions e ON e.queue_id = q.id
        GROUP BY q.id ORDER BY q.action
        """
    )
    for row in await cur.fetchall():
        action, queued, active, enq, succ, failed, canc, tout, aband, n, n_s, n_f, n_a = row
        assert (queued, active, canc, tout) == (0, 0, 0, 0), row
        assert (enq, succ, failed, aband) == (n, n_s, n_f, n_a), row
    for action, limit in LIMITS.items():
        assert_fifo_and_limit(await fetch_rows(dsn, action), limit)
    # Each killed executor was reaped within its lease + 5 s of the kill.
    late: list[str] = []
    slowest = {"executor": 0.0, "worker": 0.0}
    for kind, pid, killed_at in run.kills:
        # The killed process's executor is the newest one of its pid that
        # started before the kill: pids are reused (pid_max can be 32768),
        # so an older executor with the same pid may be another process's
        # that closed normally.
        cur = await conn.execute(
            "SELECT id, ended_at, end_reason FROM fifoq.executors"
            " WHERE pid = %s AND started_at < %s ORDER BY started_at DESC LIMIT 1",
            (pid, killed_at),
        )
        lease = CHILD_LEASE if kind == "executor" else WORKER_LEASE
        for executor_id, ended_at, reason in await cur.fetchall():
            if ended_at is None:  # killed near the end: give the reaper its time
                ended_at, reason = await wait_until(
                    functools.partial(reaped, conn, executor_id),
                    timeout=lease + RECOVERY_BOUND + 1,
                    interval=0.1,
                    message=f"{kind} {pid} (executor {executor_id}) reaped",
                )
            assert reason == "lease expired", (kind, pid, reason)
            took = (ended_at - killed_at).total_seconds()
            slowest[kind] = max(slowest[kind], took)
            if took > lease + RECOVERY_BOUND:
                late.append(f"{kind} {pid}: reaped {took:.2f} s after the kill")
    assert not late, late
    # Figures for the README's reliability section (printed with -s).
    cur = await conn.execute(
        "SELECT status, count(*) FROM fifoq.executions GROUP BY status ORDER BY status"
    )
    by_status = dict(await cur.fetchall())
    kills = {k: sum(1 for kind, _, _ in run.kills if kind == k) for k in ("executor", "worker")}
    print(
        f"\nkill run: {sum(by_status.values())} executions {by_status}, kills {kills},"
        f" slowest reap after a kill (s): {slowest}"
    )


async def test_sigkill_of_executors_and_workers_loses_nothing_and_keeps_the_guarantees(
    dsn: str, tmp_path: Path
) -> None:
    await kill_run(dsn, tmp_path, target=1500, seed=int.from_bytes(os.urandom(2)), kill_every=1.0)


@pytest.mark.soak
@pytest.mark.timeout(900)  # longer than the suite-wide 300 s
async def test_sigkill_soak_ten_thousand_executions(dsn: str, tmp_path: Path) -> None:
    await kill_run(dsn, tmp_path, target=10_000, seed=int.from_bytes(os.urandom(2)), kill_every=0.7)
