"""`fifoq demo` on the test server: runs to completion, checks itself, leaves its data."""

from __future__ import annotations

import psycopg
from e2e_support import run_cli

from fifoq.demo import verify


def test_demo_runs_to_completion_and_leaves_its_data(dsn: str) -> None:
    result = run_cli("demo", "--dsn", dsn, "--executions", "150", "--workers", "2", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "verdict: OK" in out
    assert "started 2 worker processes" in out
    assert "per queue, checked from fifoq.executions" in out
    assert "psql" in out  # the hint to inspect the data it left
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT action, status::text, count(*) FROM fifoq.execution_details "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        owners = conn.execute(
            "SELECT count(DISTINCT owner) FROM fifoq.executions WHERE owner IS NOT NULL"
        ).fetchone()
    counts = {(action, status): n for action, status, n in rows}
    assert sum(counts.values()) == 153  # 150 planned and three with a story
    assert counts[("demo.build", "cancelled")] == 1
    assert counts[("demo.report", "timed_out")] == 1
    assert counts[("demo.report", "succeeded")] == 1
    assert not any(s in ("queued", "active", "abandoned") for _, s in counts)
    assert owners is not None and owners[0] >= 2  # both worker processes ran some


async def test_the_demo_check_catches_a_broken_limit_and_broken_fifo(dsn: str) -> None:
    # Rows written directly, bypassing the protocol, to break each rule once.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO fifoq.policies (action, max_concurrent, max_queue_length)"
            " VALUES ('demo.x', 1, 100), ('demo.y', 5, 100), ('demo.z', 5, 100)"
        )
        ids = {
            action: conn.execute(
                "INSERT INTO fifoq.queues (action) VALUES (%s) RETURNING id", (action,)
            ).fetchone()[0]  # type: ignore[index]
            for action in ("demo.x", "demo.y", "demo.z", "other.x")
        }
        t = "'2026-01-01 00:00:00+00'::timestamptz + make_interval(secs => %s)"
        insert = (
            "INSERT INTO fifoq.executions (seq, queue_id, status, enqueued_at, started_at, "
            f"finished_at) VALUES (%s, %s, %s, {t}, {t}, {t})"
        )
        rows = [
            # demo.x, limit 1: two overlap.
            (1, "demo.x", "succeeded", 0, 1, 3),
            (2, "demo.x", "succeeded", 0, 2, 4),
            # demo.y: seq 2 started before seq 1.
            (1, "demo.y", "succeeded", 0, 2, 3),
            (2, "demo.y", "succeeded", 0, 1, 1.5),
            # demo.z: seq 2 started while seq 1 still waited (it timed out later).
            (2, "demo.z", "succeeded", 0, 1, 2),
            # other.x, limit unlimited: out of order but not demo's business.
            (1, "other.x", "succeeded", 0, 2, 3),
            (2, "other.x", "succeeded", 0, 1, 2),
        ]
        for seq, action, status, enq, start, end in rows:
            conn.execute(insert, (seq, ids[action], status, enq, start, end))
        conn.execute(
            "INSERT INTO fifoq.executions (seq, queue_id, status, enqueued_at, finished_at)"
            f" VALUES (1, %s, 'timed_out', {t}, {t})",
            (ids["demo.z"], 0, 5),
        )
    checked = await verify(dsn, "demo.")
    assert sorted(checked.problems) == [
        "demo.x: 2 active at once, limit 1",
        "demo.y: 1 started out of seq order, 0 started while an earlier one still waited",
        "demo.z: 0 started out of seq order, 1 started while an earlier one still waited",
    ]
