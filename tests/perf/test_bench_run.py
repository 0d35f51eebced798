"""`fifoq bench` runs end to end in --quick mode, and its FIFO/limit checker catches violations."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from fifoq.bench import BenchOptions, BenchUsageError, Violation, check_database, run
from fifoq.bench.queries import query
from fifoq.bench.server import redact
from fifoq.bench.workers import WorkerSpec
from fifoq.bench.workloads import Distribution, _run_group


@pytest.mark.slow
def test_quick_bench_runs_end_to_end(admin_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fifoq.bench",
            "--quick",
            "--dsn",
            admin_dsn,
            "--processes",
            "2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["failure"] is None
    assert figures["machine"]["cores"] >= 1
    assert figures["machine"]["server_version"].startswith("PostgreSQL")
    runs = {(t["label"], t["api"]) for t in figures["throughput"]}
    labels = {"100 x limit 5", "400 x limit 10", "10 actions x 20 x limit 2"}
    # Each workload both ways: a call per execution, and batches with workers.
    assert runs == {(label, api) for label in labels for api in ("per call", "batched")}
    for t in figures["throughput"]:
        assert t["processes"] == 2
        assert t["median"] > 0 and t["ceiling_median"] > 0 and t["ratio"] > 0
        # The one-lock bound is measured for single queues only.
        assert (t["lock_bound"] is not None and t["lock_bound"] > 0) == (t["actions"] == 1)
    assert figures["handoff"]["latency"]["n"] == figures["options"]["sizes"]["handoff_rounds"]
    assert figures["cancel"]["server"]["n"] == figures["options"]["sizes"]["cancel_rounds"]
    assert figures["cancel"]["waiter"]["p50"] > 0
    assert figures["stats"]["with_history"]["p50"] > 0
    # PostgreSQL's own refresh floor, timed in the same loop as fifoq's refresh.
    assert figures["stats"]["floor"]["n"] == figures["options"]["sizes"]["stats_samples"]
    assert figures["stats"]["floor"]["p50"] > 0
    assert figures["stats"]["history_rows"] == figures["options"]["sizes"]["stats_history"]
    assert 50 < figures["storage"]["bytes_per_execution"] < 10_000
    assert {t["name"] for t in figures["targets"]} >= {"hand-off p99", "refresh_stats (median)"}
    # The latency rows name what they are measured from: the commit only
    # where the server keeps commit timestamps.
    if figures["handoff"]["from_commit"]:
        assert "hand-off: commit -> next waiter returns" in done.stdout
    else:
        assert "hand-off: started_at (no commit timestamps) -> waiter returns" in done.stdout
        assert "cancel: finished_at (no commit timestamps) -> waiter raises" in done.stdout
    # The table at the end names the targets.
    assert "Targets" in done.stdout
    # Every scratch database was dropped again.
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'fifoq_bench_%'"
        ).fetchone()
    assert row == (0,)


def _execution(
    conn: psycopg.Connection[tuple[object, ...]],
    queue: int,
    seq: int,
    status: str,
    started: datetime | None,
    finished: datetime | None,
) -> None:
    conn.execute(
        "INSERT INTO fifoq.executions (queue_id, seq, status, enqueued_at, started_at, finished_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (queue, seq, status, T0, started, finished),
    )


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_checker_reports_violations_in_the_history(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queue = {}
        for action, limit in (("v.limit", 1), ("v.fifo", 5), ("v.counters", 5), ("v.clean", 1)):
            conn.execute("SELECT fifoq.set_policy(%s, %s)", (action, limit))
            row = conn.execute("SELECT fifoq.ensure_queue(%s, '')", (action,)).fetchone()
            assert row is not None
            queue[action] = row[0]
        # Limit 1, yet seq 2 started before seq 1 finished.
        _execution(conn, queue["v.limit"], 1, "succeeded", _at(1), _at(3))
        _execution(conn, queue["v.limit"], 2, "succeeded", _at(2), _at(4))
        # seq 2 started before seq 1; seq 4 started while seq 3 still waits.
        _execution(conn, queue["v.fifo"], 1, "succeeded", _at(5), _at(6))
        _execution(conn, queue["v.fifo"], 2, "succeeded", _at(4), _at(6))
        _execution(conn, queue["v.fifo"], 3, "queued", None, None)
        _execution(conn, queue["v.fifo"], 4, "active", _at(7), None)
        # The counters claim a waiter that does not exist.
        _execution(conn, queue["v.counters"], 1, "succeeded", _at(1), _at(2))
        # One after the other, in order: nothing wrong.
        _execution(conn, queue["v.clean"], 1, "succeeded", _at(1), _at(2))
        _execution(conn, queue["v.clean"], 2, "succeeded", _at(2), _at(3))
        _execution(conn, queue["v.clean"], 3, "cancelled", None, _at(2.5))
        _execution(conn, queue["v.clean"], 4, "active", _at(3), None)
        conn.execute(
            "UPDATE fifoq.queues SET queued_count = 1, active_count = 1 WHERE action = 'v.fifo'"
        )
        conn.execute("UPDATE fifoq.queues SET queued_count = 3 WHERE action = 'v.counters'")
        conn.execute("UPDATE fifoq.queues SET active_count = 1 WHERE action = 'v.clean'")

    found = check_database(dsn)

    by_queue: dict[str, set[str]] = {}
    for v in found:
        by_queue.setdefault(v.action, set()).add(v.kind)
    assert by_queue == {"v.limit": {"limit"}, "v.fifo": {"fifo"}, "v.counters": {"counters"}}
    fifo = [v.detail for v in found if v.kind == "fifo"]
    assert len(fifo) == 2  # seq 2 before seq 1, and seq 4 past the waiting seq 3
    assert any("2 executions active at once" in v.detail for v in found if v.kind == "limit")


def test_a_violation_fails_the_run_loudly(
    admin_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    injected = Violation("fifo", "bench.storage", "", "injected by the test")
    monkeypatch.setattr("fifoq.bench.workloads.check_database", lambda dsn: [injected])
    out, err = io.StringIO(), io.StringIO()
    options = BenchOptions.parse(
        dsn=admin_dsn, quick=True, workloads="storage", json_file=tmp_path / "b.json"
    )

    status = run(options, out=Console(file=out, width=120), err=Console(file=err, width=120))

    assert status == 1
    assert "GUARANTEE VIOLATED" in err.getvalue()
    assert "injected by the test" in err.getvalue()
    figures = json.loads((tmp_path / "b.json").read_text())
    assert "injected by the test" in figures["failure"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"processes": "1,x"}, "--processes must be comma-separated"),
        ({"processes": "0"}, "--processes must list counts from 1"),
        ({"workloads": "throughput,nope"}, "unknown workload 'nope'"),
        ({"repeat": 0}, "--repeat must be at least 1"),
        ({"server_settings": ["fsync"]}, "NAME=VALUE"),
        ({"server_settings": ["fsync=off"], "dsn": "host=x"}, "embedded server only"),
        # Output paths are checked before the run, not after minutes of it.
        ({"json_file": Path("/no/such/folder/b.json")}, "--json: folder /no/such/folder does"),
        ({"plot": Path("/tmp/bench.txt")}, "--plot: cannot draw a '.txt'"),
        ({"plot": Path("/tmp")}, "--plot: /tmp is a folder"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(BenchUsageError, match=message):
        BenchOptions.parse(**kwargs)  # type: ignore[arg-type]


def test_printed_dsn_has_no_password() -> None:
    shown = redact("postgresql://bench:s3cret@db.example:5432/postgres")
    assert "s3cret" not in shown
    assert "***" in shown and "db.example" in shown


def test_percentiles_are_nearest_rank() -> None:
    d = Distribution.of([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (d.n, d.p50, d.p99, d.max) == (100, 50.0, 99.0, 100.0)
    assert Distribution.of([]).n == 0


async def test_cpu_of_processes_that_end_by_themselves_is_counted(dsn: str) -> None:
    """The server's CPU of a run is read after its processes have ended.

    Here the "server" is this test's own process tree, which holds the
    group's processes: their CPU must be in it (read right after they were
    released, it was next to nothing).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query("ceiling_table"), {})
    run_ = await _run_group(
        [WorkerSpec("ceiling", dsn, connections=1, total=300) for _ in range(2)],
        os.getpid(),
    )
    assert run_.server_cpu is not None
    assert run_.client_cpu > 0
    assert run_.server_cpu >= run_.client_cpu, (run_.server_cpu, run_.client_cpu)
