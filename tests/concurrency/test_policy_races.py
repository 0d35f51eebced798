"""A policy changed while an enqueue waits for the queue lock is the policy it is checked by.

Three connections: A enqueues in a transaction it keeps open (holding the
queue lock), B's enqueue waits for that lock, an operator changes the policy
and commits, then A commits. B must be decided by the new policy: before
0014 it used the one it read before the lock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from helpers import assert_fifo_and_limit, fetch_rows, wait_until

# How B enqueues one execution, returning its status.
CALLS = {
    "enqueue": "SELECT status::text FROM fifoq.enqueue(%s)",
    "enqueue_many": "SELECT status::text FROM fifoq.enqueue_many(%s, ARRAY[NULL]::jsonb[])",
}


async def waits_for_an_advisory_lock(conn: psycopg.AsyncConnection[Any], pid: int) -> bool:
    """Whether backend ``pid`` waits for an advisory lock (fifoq's queue lock)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks"
        " WHERE pid = %s AND locktype = 'advisory' AND NOT granted)",
        (pid,),
    )
    row = await cur.fetchone()
    assert row is not None
    return bool(row[0])


async def enqueue_across_a_policy_change(
    dsn: str, action: str, call: str, before: str, after: str
) -> str:
    """B's status once A (one active execution) commits after ``after`` replaced ``before``.

    ``before`` and ``after`` are the argument lists of fifoq.set_policy after
    the action. Raises what B's enqueue raises.
    """
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as operator,
        await psycopg.AsyncConnection.connect(dsn) as a,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as b,
    ):
        await operator.execute(f"SELECT fifoq.set_policy(%s, {before})", (action,))
        # The queue exists beforehand: B then waits for A's queue lock, not
        # for A's uncommitted insert of the queue row.
        await operator.execute("SELECT fifoq.ensure_queue(%s, '')", (action,))
        cur = await a.execute(CALLS["enqueue"], (action,))
        assert await cur.fetchone() == ("active",)  # A holds the queue lock until it commits

        b_enqueue = asyncio.create_task(b.execute(CALLS[call], (action,)))
        try:
            pid = b.info.backend_pid
            await wait_until(
                lambda: waits_for_an_advisory_lock(operator, pid),
                timeout=10,
                message="B waiting for the queue lock",
            )
            # set_policy locks only queues with waiters: it commits while A is open.
            await operator.execute(f"SELECT fifoq.set_policy(%s, {after})", (action,))
            assert not b_enqueue.done()
            await a.commit()
            cur = await asyncio.wait_for(b_enqueue, timeout=10)
        finally:
            # On a failure above, B may still wait on A: cancel its query, or
            # closing B's connection would wait for it.
            if not b_enqueue.done():
                await b.cancel_safe()
            await asyncio.gather(b_enqueue, return_exceptions=True)
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_limit_lowered_while_an_enqueue_waits_for_the_lock_holds_for_it(
    dsn: str, call: str
) -> None:
    """README: after a lowered limit the queue admits nobody until it drained below it.

    B read limit 5 before the lock; by the time it holds the lock the limit
    is 1 and A's execution is active, so B waits (before 0014: admitted,
    2 active at limit 1).
    """
    action = f"policy.lowered_{call}"
    status = await enqueue_across_a_policy_change(dsn, action, call, "5", "1")
    assert status == "queued"
    rows = await fetch_rows(dsn, action)
    assert [r.status for r in rows] == ["active", "queued"]
    assert_fifo_and_limit(rows, 1)


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_on_limit_reject_set_while_an_enqueue_waits_for_the_lock_refuses_it(
    dsn: str, call: str
) -> None:
    """on_limit comes from the read under the lock too (before 0014: B was queued)."""
    action = f"policy.reject_{call}"
    with pytest.raises(psycopg.Error) as info:
        await enqueue_across_a_policy_change(dsn, action, call, "1", "1, 10000, 3600.0, 'reject'")
    assert info.value.sqlstate == "FQ403"
    assert [r.status for r in await fetch_rows(dsn, action)] == ["active"]
