"""The benchmark workloads: throughput against the ceiling, latencies, stats cost, storage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..manager import QueueManager
from .checks import GuaranteeViolated, Violation, check_database
from .machine import process_tree_cpu
from .queries import query
from .server import BenchServer
from .workers import WorkerGroup, WorkerSpec

__all__ = [
    "CancelResult",
    "Distribution",
    "HandoffResult",
    "StatsResult",
    "StorageResult",
    "Throughput",
    "run_cancel",
    "run_handoff",
    "run_stats",
    "run_storage",
    "run_throughput",
]

Step = Callable[[str], None]

# Concurrent enqueue_and_wait + complete loops per slot of a queue, over all
# processes: one to run in the slot, one already waiting behind it, so a
# freed slot always has someone to hand it to.
LOOPS_PER_SLOT = 2
# Pool size of each executor process, and connections of each ceiling process.
CONNECTIONS_PER_PROCESS = 10
# Payloads per enqueue_many call of the batched producer.
PRODUCER_BATCH = 100
# Most handlers one benchmark worker process runs at once.
MAX_WORKER_CONCURRENCY = 1000
# How often the driver looks whether the batched run has finished.
FINISHED_POLL_SECONDS = 0.1
# The two ways the throughput workloads drive fifoq.
PER_CALL = "per call"
BATCHED = "batched"
MAX_QUEUE_LENGTH = 1_000_000
# How long the latency driver lets a registered waiter settle into its wait
# before completing or cancelling in front of it (the waiter's subscription
# follows its watch round trip by microseconds).
SETTLE_SECONDS = 0.002


@dataclass(frozen=True)
class Distribution:
    """Summary of latency samples, in milliseconds (nearest-rank percentiles)."""

    n: int
    p50: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Distribution:
        """Summarise samples given in seconds."""
        if not seconds:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        ms = sorted(s * 1000.0 for s in seconds)
        return cls(
            n=len(ms),
            p50=percentile(ms, 50),
            p99=percentile(ms, 99),
            max=ms[-1],
            mean=statistics.fmean(ms),
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile of already sorted values."""
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Throughput:
    """Executions per second of one workload at one process count, with its ceiling."""

    workload: str
    label: str
    api: str  # PER_CALL: enqueue_and_wait + complete per execution; BATCHED: enqueue_many + workers
    actions: int
    per_action: int
    limit: int
    processes: int
    loops_per_action: int
    connections_per_process: int
    rates: list[float] = field(default_factory=list)
    ceiling_rates: list[float] = field(default_factory=list)
    # CPU microseconds per execution (client processes, server processes),
    # per run; the server's only when the benchmark started it.
    client_cpu_us: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)
    ceiling_client_cpu_us: list[float] = field(default_factory=list)
    ceiling_server_cpu_us: list[float] = field(default_factory=list)
    # One queue only: transactions/s through one lock (unflushed commit, then a flush), per run.
    lock_rates: list[float] = field(default_factory=list)
    # Batched only: executions each worker process ran, per run (how the
    # queues' work spread over the workers).
    worker_completed: list[list[int]] = field(default_factory=list)

    @property
    def executions(self) -> int:
        """Executions per run."""
        return self.actions * self.per_action

    @property
    def median(self) -> float:
        """Median executions/s over the runs."""
        return statistics.median(self.rates) if self.rates else math.nan

    @property
    def ceiling_median(self) -> float:
        """Median insert+update pairs/s of the ceiling loop over the runs."""
        return statistics.median(self.ceiling_rates) if self.ceiling_rates else math.nan

    @property
    def ratio(self) -> float:
        """fifoq's median as a fraction of the ceiling's."""
        return self.median / self.ceiling_median if self.ceiling_rates else math.nan

    @property
    def lock_bound(self) -> float:
        """Executions/s one queue allows: half the one-lock transaction rate (two per execution)."""
        return statistics.median(self.lock_rates) / 2 if self.lock_rates else math.nan

    @property
    def bound_ratio(self) -> float:
        """fifoq's median as a fraction of the one-lock bound."""
        return self.median / self.lock_bound if self.lock_rates else math.nan


@dataclass
class HandoffResult:
    """Admission hand-off: a completion's commit to the next waiter's return from wait_started."""

    rounds: int
    method: str
    latency: Distribution
    from_started_at: Distribution  # same, measured from the admission's started_at
    # latency is from the commit (track_commit_timestamp on), else it is the
    # same as from_started_at.
    from_commit: bool
    clock_offset_ms: float
    clock_uncertainty_ms: float


@dataclass
class CancelResult:
    """Cancel of a waiting execution: server-side time, round trip, and until the waiter raises."""

    rounds: int
    method: str
    server: Distribution
    round_trip: Distribution
    waiter: Distribution
    waiter_from_commit: bool  # else from the cancel's finished_at (no commit timestamps)


@dataclass
class StatsResult:
    """refresh_stats() cost with and without finished history."""

    actions: int
    history_rows: int
    samples: int
    without_history: Distribution
    with_history: Distribution
    without_history_round_trip: Distribution
    with_history_round_trip: Distribution
    history_insert_seconds: float
    # A plain REFRESH of a matview of the same shape over a copy of the rows,
    # timed alongside: PostgreSQL's own cost of the command on this server,
    # which no view definition can go below.
    floor: Distribution


@dataclass
class StorageResult:
    """Bytes of fifoq.executions (table and indexes) per waiting execution."""

    queued: int
    total_bytes: int
    bytes_per_execution: float
    per_relation: dict[str, float]


# -- helpers --------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _set_policies(dsn: str, actions: Sequence[str], limit: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for action in actions:
            conn.execute(
                query("set_policy"),
                {"action": action, "max_concurrent": limit, "max_queue_length": MAX_QUEUE_LENGTH},
            )


def _verify(dsn: str, workload: str, expected_succeeded: int | None = None) -> None:
    """Fail loudly when the workload broke FIFO, the limit, the counters, or lost executions."""
    violations = check_database(dsn)
    if expected_succeeded is not None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(query("throughput_window"), {}).fetchone()
        assert row is not None
        if row[1] != expected_succeeded:
            violations.append(
                Violation(
                    "lost",
                    workload,
                    "",
                    f"{row[1]} of {expected_succeeded} executions succeeded ({row[0]} stored)",
                )
            )
    if violations:
        raise GuaranteeViolated(workload, violations)


def _window_rate(dsn: str, name: str, expected: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query(name), {}).fetchone()
    assert row is not None
    executions, succeeded, first, last = row
    if succeeded != expected:
        raise RuntimeError(f"{name}: {succeeded} of {expected} finished")
    return float(executions) / (float(last) - float(first))


@dataclass(frozen=True)
class _GroupRun:
    results: list[dict[str, Any]]
    client_cpu: float  # seconds, all processes of the group
    server_cpu: float | None  # seconds, all server processes (embedded server only)


async def _run_group(
    specs: list[WorkerSpec],
    server_pid: int | None = None,
    *,
    until_finished: tuple[str, int] | None = None,
) -> _GroupRun:
    """Start the processes, release them together, collect their figures.

    With ``until_finished=(dsn, total)`` the processes go on until told to
    stop (producers, workers): they are stopped once ``total`` executions
    have ended in that database.
    """
    async with WorkerGroup(specs) as group:
        await group.ready()
        before = process_tree_cpu(server_pid) if server_pid else None
        group.go()
        if until_finished is not None:
            await _wait_finished(group, *until_finished)
            after = process_tree_cpu(server_pid) if server_pid else None
            group.stop()
            results = await group.results()
        else:
            # The processes end by themselves: the server's CPU is read
            # once they have (reading it right after go() measured nothing).
            results = await group.results()
            after = process_tree_cpu(server_pid) if server_pid else None
    return _GroupRun(
        results=results,
        client_cpu=sum(float(r.get("cpu_seconds", 0.0)) for r in results),
        server_cpu=after - before if after is not None and before is not None else None,
    )


async def _wait_finished(group: WorkerGroup, dsn: str, total: int) -> None:
    """Poll the queue counters until ``total`` executions ended; fail if a process dies."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(query("finished_count"), {})
            row = await cur.fetchone()
            if row is not None and int(row[0]) >= total:
                return
            group.check_alive()
            await asyncio.sleep(FINISHED_POLL_SECONDS)


# -- throughput -------------------------------------------------------------------


async def run_throughput(
    server: BenchServer,
    *,
    workload: str,
    label: str,
    actions: int,
    per_action: int,
    limit: int,
    processes: int,
    repeat: int,
    step: Step,
    lock_seconds: float = 0.0,
) -> list[Throughput]:
    """No-op executions end to end, two ways, and the insert+update ceiling, ``repeat`` times each.

    Per call: every executor process runs concurrent ``enqueue_and_wait`` +
    ``complete`` loops on every action, one execution per call. Batched: one
    producer process enqueues with ``enqueue_many`` (PRODUCER_BATCH at a
    time) while ``processes`` worker processes (:class:`fifoq.Worker`, no-op
    handlers) claim and complete, outcomes grouped per statement. The rate
    is executions over the span from the first enqueue to the last
    completion, by the server's clock. The ceiling
    runs the same number of insert+update pairs from the same number of
    processes with as many connections as an executor's pool. With
    ``lock_seconds`` (one queue only), the same connections also run
    transactions through one advisory lock held to an unflushed commit, each
    followed by a durable flush, for that long: the most a single queue can
    do under fifoq's protocol, where every enqueue and every completion is
    such a transaction.
    """
    names = [f"bench.{workload}.{i:03d}" for i in range(actions)]
    loops = LOOPS_PER_SLOT * limit
    loops_per_process = max(1, math.ceil(loops / processes))
    connections = min(CONNECTIONS_PER_PROCESS, loops_per_process * actions)
    result, batched = (
        Throughput(
            workload=workload,
            label=label,
            api=api,
            actions=actions,
            per_action=per_action,
            limit=limit,
            processes=processes,
            loops_per_action=loops_per_process * processes,
            connections_per_process=connections,
        )
        for api in (PER_CALL, BATCHED)
    )
    total = actions * per_action
    for run in range(1, repeat + 1):
        what = f"{label}, {processes} process{'es' if processes > 1 else ''}, run {run}/{repeat}"
        with server.database(f"{workload}_p{processes}_r{run}") as dsn:
            step(f"ceiling: {what}")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(query("ceiling_table"), {})
            ceiling = await _run_group(
                [
                    WorkerSpec("ceiling", dsn, connections=connections, total=share)
                    for share in _split(total, processes)
                ],
                server.server_pid,
            )
            for r in (result, batched):
                r.ceiling_rates.append(_window_rate(dsn, "ceiling_window", total))
                r.ceiling_client_cpu_us.append(ceiling.client_cpu / total * 1e6)
                if ceiling.server_cpu is not None:
                    r.ceiling_server_cpu_us.append(ceiling.server_cpu / total * 1e6)

            if lock_seconds > 0 and actions == 1:
                step(f"one-lock bound: {what}")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(query("lock_table"))
                locked = await _run_group(
                    [
                        WorkerSpec("lock", dsn, connections=connections, seconds=lock_seconds)
                        for _ in range(processes)
                    ]
                )
                transactions = sum(int(r["completed"]) for r in locked.results)
                elapsed = max(float(r["seconds"]) for r in locked.results)
                result.lock_rates.append(transactions / elapsed)
                batched.lock_rates.append(transactions / elapsed)

            step(f"fifoq: {what}")
            _set_policies(dsn, names, limit)
            shares = [_split(per_action, processes) for _ in names]
            specs = [
                WorkerSpec(
                    "fifoq",
                    dsn,
                    counts={name: shares[i][p] for i, name in enumerate(names)},
                    tasks_per_action=loops_per_process,
                    connections=connections,
                )
                for p in range(processes)
            ]
            run_ = await _run_group(specs, server.server_pid)
            result.rates.append(_window_rate(dsn, "throughput_window", total))
            result.client_cpu_us.append(run_.client_cpu / total * 1e6)
            if run_.server_cpu is not None:
                result.server_cpu_us.append(run_.server_cpu / total * 1e6)
            _verify(dsn, f"{workload} ({what})", expected_succeeded=total)

        with server.database(f"{workload}_b_p{processes}_r{run}") as dsn:
            step(f"fifoq batched: {what}")
            _set_policies(dsn, names, limit)
            specs = [
                WorkerSpec(
                    "producer", dsn, counts=dict.fromkeys(names, per_action), batch=PRODUCER_BATCH
                ),
                *(
                    WorkerSpec(
                        "worker",
                        dsn,
                        counts=dict.fromkeys(names, 0),
                        concurrency=min(actions * limit, MAX_WORKER_CONCURRENCY),
                    )
                    for _ in range(processes)
                ),
            ]
            run_ = await _run_group(specs, server.server_pid, until_finished=(dsn, total))
            batched.rates.append(_window_rate(dsn, "throughput_window", total))
            batched.client_cpu_us.append(run_.client_cpu / total * 1e6)
            batched.worker_completed.append([int(r["completed"]) for r in run_.results[1:]])
            if run_.server_cpu is not None:
                batched.server_cpu_us.append(run_.server_cpu / total * 1e6)
            _verify(dsn, f"{workload} batched ({what})", expected_succeeded=total)
    return [result, batched]


# -- latencies --------------------------------------------------------------------


async def _registered_waiter(conn: psycopg.AsyncConnection[Any], action: str) -> int:
    """Wait until the waiter process has enqueued and registered (watch) its next wait."""
    while True:
        cur = await conn.execute(query("queued_head"), {"action": action})
        row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        await asyncio.sleep(0.0002)


async def _commit_times(
    conn: psycopg.AsyncConnection[Any], ids: list[int], have_commit_ts: bool
) -> dict[int, tuple[float | None, float | None, float | None]]:
    name = "commit_times" if have_commit_ts else "started_times"
    cur = await conn.execute(query(name), {"ids": ids})
    return {int(r[0]): (r[1], r[2], r[3]) for r in await cur.fetchall()}


async def _track_commit_timestamp(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT current_setting('track_commit_timestamp', true)")
    row = await cur.fetchone()
    return row is not None and row[0] == "on"


def _method(have_commit_ts: bool, event: str, fallback: str) -> str:
    reference = (
        "the commit timestamp of the transaction (pg_xact_commit_timestamp)"
        if have_commit_ts
        else f"{fallback} (clock_timestamp() inside the transaction, before its commit; "
        "track_commit_timestamp is off)"
    )
    return (
        f"from {reference} to the waiter's time.time() when {event}, in another process; "
        "the waiter's clock is mapped onto the server's by the offset of its fastest "
        "SELECT clock_timestamp() round trip"
    )


async def run_handoff(server: BenchServer, *, rounds: int, step: Step) -> HandoffResult:
    """Time from a completion's commit to the next waiter (another process) leaving wait_started.

    The driver holds the only slot (limit 1). The waiter process enqueues
    and waits; once its wait is registered the driver completes the
    execution in the slot, whose transaction admits the waiter's. Then the
    waiter holds the slot and the driver completes it the next round.
    """
    action = "bench.handoff"
    with server.database("handoff") as dsn:
        step(f"hand-off latency: {rounds} rounds")
        _set_policies(dsn, [action], 1)
        async with (
            QueueManager.connect(dsn, min_size=2, max_size=2, name="fifoq-bench-driver") as qm,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        ):
            have_commit_ts = await _track_commit_timestamp(conn)
            current = (await qm.enqueue_and_wait(action)).id
            completed: list[int] = []
            admitted: list[int] = []
            spec = WorkerSpec("waiter", dsn, action=action, rounds=rounds, mode="handoff")
            async with WorkerGroup([spec]) as group:
                await group.ready()
                group.go()
                for _ in range(rounds):
                    following = await _registered_waiter(conn, action)
                    await asyncio.sleep(SETTLE_SECONDS)
                    await qm.complete(current)
                    completed.append(current)
                    admitted.append(following)
                    current = following
                (waiter,) = await group.results()
            times = await _commit_times(conn, completed + admitted, have_commit_ts)
        _verify(dsn, "handoff", expected_succeeded=rounds + 1)

    offset = float(waiter["clock_offset"])
    returned = {int(i): float(t) + offset for i, t in waiter["returned"]}
    from_commit: list[float] = []
    from_started: list[float] = []
    for done, nxt in zip(completed, admitted, strict=True):
        committed = times[done][0]
        started = times[nxt][1]
        if committed is not None:
            from_commit.append(returned[nxt] - committed)
        if started is not None:
            from_started.append(returned[nxt] - started)
    return HandoffResult(
        rounds=rounds,
        method=_method(have_commit_ts, "wait_started returned", "the admission's started_at"),
        from_commit=have_commit_ts,
        latency=Distribution.of(from_commit if have_commit_ts else from_started),
        from_started_at=Distribution.of(from_started),
        clock_offset_ms=offset * 1000,
        clock_uncertainty_ms=float(waiter["clock_uncertainty"]) * 1000,
    )


async def run_cancel(server: BenchServer, *, rounds: int, step: Step) -> CancelResult:
    """Server-side time of fifoq.cancel on a waiting execution, and until its waiter raises.

    The driver holds the only slot; the waiter process waits on a new
    execution each round and the driver cancels it with ``EXPLAIN ANALYZE``,
    whose "Execution Time" is the function's own time on the server.
    """
    action = "bench.cancel"
    with server.database("cancel") as dsn:
        step(f"cancel latency: {rounds} rounds")
        _set_policies(dsn, [action], 1)
        async with (
            QueueManager.connect(dsn, min_size=1, max_size=1, name="fifoq-bench-driver") as qm,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as canceller,
        ):
            have_commit_ts = await _track_commit_timestamp(conn)
            holder = (await qm.enqueue_and_wait(action)).id
            cancelled: list[int] = []
            server_s: list[float] = []
            round_trip_s: list[float] = []
            spec = WorkerSpec("waiter", dsn, action=action, rounds=rounds, mode="cancel")
            async with WorkerGroup([spec]) as group:
                await group.ready()
                group.go()
                for _ in range(rounds):
                    victim = await _registered_waiter(conn, action)
                    await asyncio.sleep(SETTLE_SECONDS)
                    before = time.perf_counter()
                    cur = await canceller.execute(query("explain_cancel"), {"id": victim})
                    row = await cur.fetchone()
                    await canceller.execute(query("flush"), {})
                    round_trip_s.append(time.perf_counter() - before)
                    assert row is not None
                    server_s.append(_execution_time(row[0]))
                    cancelled.append(victim)
                (waiter,) = await group.results()
            await qm.complete(holder)
            times = await _commit_times(conn, cancelled, have_commit_ts)
        _verify(dsn, "cancel", expected_succeeded=1)

    offset = float(waiter["clock_offset"])
    raised = {int(i): float(t) + offset for i, t in waiter["returned"]}
    # Without commit timestamps, finished_at (set inside the cancel) is the reference.
    reference = {i: (t[0] if have_commit_ts else t[2]) for i, t in times.items()}
    waiter_s = [raised[i] - ref for i in cancelled if (ref := reference.get(i)) is not None]
    return CancelResult(
        rounds=rounds,
        method="server: EXPLAIN (ANALYZE) Execution Time of SELECT fifoq.cancel_deferred(id); "
        "round trip: that statement and the flush after it, seen by the client; waiter: "
        + _method(have_commit_ts, "ExecutionCancelled was raised", "the cancel's finished_at"),
        server=Distribution.of(server_s),
        round_trip=Distribution.of(round_trip_s),
        waiter=Distribution.of(waiter_s),
        waiter_from_commit=have_commit_ts,
    )


def _execution_time(plan: Any) -> float:
    """Seconds of "Execution Time" in an EXPLAIN (ANALYZE, FORMAT JSON) answer."""
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Execution Time"]) / 1000.0


# -- stats and storage ------------------------------------------------------------


async def run_stats(
    server: BenchServer,
    *,
    actions: int,
    history_rows: int,
    samples: int,
    step: Step,
) -> StatsResult:
    """refresh_stats() with ``actions`` live queues, without and then with finished history.

    Each queue holds two active and three waiting executions. The history is
    written straight into fifoq.executions with one INSERT ... SELECT
    generate_series (succeeded, in seq order, with matching queue counters),
    then vacuumed and analysed as autovacuum would. Without history, the
    floor (``StatsResult.floor``) is timed in the same loop.
    """
    prefix = "bench.stats."
    per_queue = max(1, history_rows // actions)
    figures: dict[bool, tuple[Distribution, Distribution]] = {}
    floor_s: list[float] = []
    insert_seconds = 0.0
    for with_history in (False, True):
        label = "with_history" if with_history else "no_history"
        with server.database(f"stats_{label}") as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                params = {
                    "prefix": prefix,
                    "actions": actions,
                    "max_concurrent": 2,
                    "max_queue_length": MAX_QUEUE_LENGTH,
                    "per_queue": per_queue,
                    "per_action": 5,
                }
                conn.execute(query("stats_policies"), params)
                if with_history:
                    step(f"stats: inserting {per_queue * actions:,} finished executions")
                    started = time.perf_counter()
                    with conn.transaction():
                        conn.execute(query("history_queues"), params)
                        conn.execute(query("history_insert"), params)
                        conn.execute(query("history_counters"), params)
                    conn.execute("VACUUM (ANALYZE) fifoq.executions")
                    insert_seconds = time.perf_counter() - started
                conn.execute(query("live_load"), params)
                # The floor is timed in the database without history, its
                # samples interleaved with fifoq's so both see the same noise.
                with_floor = not with_history
                if with_floor:
                    conn.execute(query("refresh_floor_create"))  # no parameters: several statements
                # Write back what the set-up wrote (the new database, the
                # history, the live rows) now, so the checkpointer does not do
                # it during the timed refreshes: that is the set-up's cost,
                # not the refresh's. Both phases alike, or the comparison
                # with history is not like for like (only the history phase
                # did it until stop 19, and ran 0.5-0.95x the other). Needs
                # superuser or pg_checkpoint; without, the figures just carry
                # the noise.
                with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                    conn.execute("CHECKPOINT")
                step(f"stats: refresh_stats() x {samples}, {label.replace('_', ' ')}")
                for _ in range(3):  # warm the caches and the matviews
                    conn.execute(query("refresh_stats"), {})
                    if with_floor:
                        conn.execute(query("explain_refresh_floor"), {})
                server_s: list[float] = []
                round_trip_s: list[float] = []
                for _ in range(samples):
                    row = conn.execute(query("explain_refresh_stats"), {}).fetchone()
                    assert row is not None
                    server_s.append(_execution_time(row[0]))
                    before = time.perf_counter()
                    conn.execute(query("refresh_stats"), {})
                    round_trip_s.append(time.perf_counter() - before)
                    if with_floor:
                        row = conn.execute(query("explain_refresh_floor"), {}).fetchone()
                        assert row is not None
                        floor_s.append(_execution_time(row[0]))
            figures[with_history] = (Distribution.of(server_s), Distribution.of(round_trip_s))
            _verify(dsn, f"stats ({label})")
    return StatsResult(
        actions=actions,
        history_rows=per_queue * actions,
        samples=samples,
        without_history=figures[False][0],
        with_history=figures[True][0],
        without_history_round_trip=figures[False][1],
        with_history_round_trip=figures[True][1],
        history_insert_seconds=insert_seconds,
        floor=Distribution.of(floor_s),
    )


async def run_storage(server: BenchServer, *, queued: int, step: Step) -> StorageResult:
    """Bytes of fifoq.executions and its indexes per waiting execution, at ``queued`` waiting.

    One slot (limit 1), so all but the first wait; payloads are NULL, so the
    figure is fifoq's own overhead. Enqueued through fifoq.enqueue in
    batches, each its own transaction, as real producers would.
    """
    action = "bench.storage"
    batch = 10_000
    with server.database("storage") as dsn:
        _set_policies(dsn, [action], 1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            before = _sizes(conn)
            done = 0
            while done < queued:
                n = min(batch, queued - done)
                step(f"storage: enqueued {done:,} of {queued:,}")
                conn.execute(query("storage_enqueue"), {"action": action, "n": n})
                done += n
            after = _sizes(conn)
        _verify(dsn, "storage")
    total = sum(after.values()) - sum(before.values())
    return StorageResult(
        queued=queued,
        total_bytes=total,
        bytes_per_execution=total / queued,
        per_relation={k: (after[k] - before.get(k, 0)) / queued for k in after},
    )


def _sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in conn.execute(query("storage_sizes"), {}).fetchall()}
