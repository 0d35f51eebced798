"""A cancel or time-out racing an uncommitted admission waits for it (the queue lock).

Two connections: X completes the running execution in a transaction it keeps
open, which admits the head of the line; Y cancels (or times out) that head
meanwhile. Y must wait for X's queue lock and then see the head as X left it
(active): without the lock it read the head as still queued, took it off the
waiting count instead of the active one, and the slot leaked for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from helpers import wait_until

CALLS = {
    "cancel": ("SELECT fifoq.cancel(%s)::text", "true", "cancelled"),
    # Too late for a time-out: the head already started.
    "time_out": ("SELECT status::text FROM fifoq.time_out(%s)", "active", "active"),
}


async def waits_for_a_lock(conn: psycopg.AsyncConnection[Any], pid: int) -> bool:
    """Whether backend ``pid`` waits for any lock (the queue lock; a row lock without it)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted)", (pid,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_change_racing_an_uncommitted_admission_sees_it_and_frees_no_slot_twice(
    dsn: str, call: str
) -> None:
    statement, answer, head_status = CALLS[call]
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer,
        await psycopg.AsyncConnection.connect(dsn) as x,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as y,
    ):
        await observer.execute("SELECT fifoq.set_policy('ql.race', 1, 10, 60)")
        cur = await observer.execute("SELECT id FROM fifoq.enqueue('ql.race')")
        running = await cur.fetchone()
        cur = await observer.execute("SELECT id FROM fifoq.enqueue('ql.race')")
        head = await cur.fetchone()
        assert running is not None and head is not None
        await x.execute("SELECT fifoq.complete(%s)", (running[0],))  # admits head; open
        change = asyncio.create_task(y.execute(statement, (head[0],)))
        try:
            pid = y.info.backend_pid
            await wait_until(lambda: waits_for_a_lock(observer, pid), message="Y waiting")
            await x.commit()
            cur = await asyncio.wait_for(change, timeout=10)
        finally:
            if not change.done():
                await y.cancel_safe()
            await asyncio.gather(change, return_exceptions=True)
        assert await cur.fetchone() == (answer,)
        cur = await observer.execute(
            "SELECT (SELECT status::text FROM fifoq.executions WHERE id = %s),"
            " q.queued_count, q.active_count,"
            " (SELECT count(*) FROM fifoq.executions e"
            "   WHERE e.queue_id = q.id AND e.status = 'queued'),"
            " (SELECT count(*) FROM fifoq.executions e"
            "   WHERE e.queue_id = q.id AND e.status = 'active')"
            " FROM fifoq.queues q WHERE q.action = 'ql.race'",
            (head[0],),
        )
        status, queued, active, queued_rows, active_rows = await cur.fetchone() or (None,) * 5
        assert status == head_status
        assert (queued, active) == (queued_rows, active_rows)
        # The slot is exactly as taken as the rows say: a newcomer starts iff it is free.
        cur = await observer.execute("SELECT status::text FROM fifoq.enqueue('ql.race')")
        assert await cur.fetchone() == ("queued" if active_rows else "active",)


async def test_a_batch_takes_its_queue_locks_in_one_order_so_it_never_deadlocks(
    dsn: str,
) -> None:
    # complete_many locks the queues of its batch in queue id order, as
    # every multi-queue statement does. A client transaction that holds the
    # first queue and then enqueues into the second must find the second
    # free (the batch waits for the first, holding nothing); in the other
    # order the two would deadlock and PostgreSQL would abort one of them.
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer,
        await psycopg.AsyncConnection.connect(dsn) as client,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as batch,
    ):
        ids = []
        for action in ("ql.first", "ql.second"):  # queue ids in this order
            cur = await observer.execute("SELECT id FROM fifoq.enqueue(%s)", (action,))
            row = await cur.fetchone()
            assert row is not None
            ids.append(row[0])
        await client.execute("SELECT fifoq.enqueue('ql.first')")  # holds the first queue
        completing = asyncio.create_task(
            batch.execute(
                "SELECT status::text FROM fifoq.complete_many(%s, ARRAY[NULL, NULL]::jsonb[],"
                " ARRAY[NULL, NULL]::text[])",
                (ids,),
            )
        )
        try:
            pid = batch.info.backend_pid
            await wait_until(lambda: waits_for_a_lock(observer, pid), message="batch waiting")
            await asyncio.wait_for(client.execute("SELECT fifoq.enqueue('ql.second')"), 10)
            await client.commit()
            cur = await asyncio.wait_for(completing, timeout=10)
        finally:
            if not completing.done():
                await batch.cancel_safe()
            await asyncio.gather(completing, return_exceptions=True)
        assert await cur.fetchall() == [("succeeded",), ("succeeded",)]
