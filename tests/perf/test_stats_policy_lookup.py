"""The stats view's inlined policy lookup (kept inline for speed) agrees with fifoq.policy_for."""

from __future__ import annotations

import psycopg


def test_stats_limit_is_the_policy_in_force_for_every_queue(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.set_policy('own.a', 2)")
        conn.execute("SELECT fifoq.set_policy('own.*', 3)")
        conn.execute("SELECT fifoq.set_policy('pack.*', 4)")
        for action in ("own.a", "own.b", "pack.x", "bare"):
            conn.execute("SELECT fifoq.enqueue(%s)", (action,))
        expected = {"own.a": 2, "own.b": 3, "pack.x": 4, "bare": None}

        live = dict(conn.execute("SELECT action, max_concurrent FROM fifoq.queue_stats_live"))
        assert live == expected
        conn.execute("SELECT fifoq.set_policy('*', 5)")  # a default now covers 'bare'
        conn.execute("SELECT fifoq.refresh_stats()")
        snapshot = dict(conn.execute("SELECT action, max_concurrent FROM fifoq.queue_stats"))
        assert snapshot == {**expected, "bare": 5}
        by_function = dict(
            conn.execute(
                "SELECT q.action, (fifoq.policy_for(q.action)).max_concurrent FROM fifoq.queues q"
            )
        )
        assert snapshot == by_function
