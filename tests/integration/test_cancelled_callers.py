"""A caller cancelled mid-statement leaves no execution holding a slot for nobody.

``enqueue_and_wait`` and ``wait_started`` make this executor an execution's
owner in a statement that commits before its flush returns. A task cancelled
in between (``asyncio.wait_for`` running out, a server shutting down) used to
leave that execution owned, and so its slot held, until the executor closed.
Here the flush is held on an advisory lock the test owns, so the cancel lands
exactly in that window every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from helpers import fetch_rows, wait_until

from fifoq import Execution, QueueManager, Status

GATE = 7_340_001  # advisory lock key the gated flush waits for


@pytest.fixture
async def gate(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Every flush waits for advisory lock GATE, held by the yielded connection until it unlocks."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "ALTER PROCEDURE fifoq.flush_and_notify() RENAME TO real_flush_and_notify"
        )
        await conn.execute(
            f"""
            CREATE PROCEDURE fifoq.flush_and_notify() LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock_shared({GATE});
                CALL fifoq.real_flush_and_notify();
            END $$
            """
        )
        await conn.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        yield conn


async def flush_waits_at_the_gate(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
            " AND NOT granted",
            (GATE,),
        )
        row = await cur.fetchone()
        return row is not None and row[0] > 0


async def cancel_in_the_flush(
    dsn: str, gate: psycopg.AsyncConnection[Any], call: Callable[[], Awaitable[Execution]]
) -> None:
    """Start ``call``, cancel it while its statement's flush waits, then open the gate."""
    task = asyncio.create_task(call())
    await wait_until(lambda: flush_waits_at_the_gate(dsn), message="flush held at the gate")
    task.cancel()
    # The caller leaves at once, though its statement still waits at the gate.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    await gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))


async def status_becomes(qm: QueueManager, execution_id: int, status: Status) -> None:
    async def reached() -> bool:
        return (await qm.get(execution_id)).status is status

    await wait_until(reached, message=f"execution {execution_id} {status}")


async def test_cancelled_enqueue_and_wait_gives_its_slot_back(
    qm: QueueManager, dsn: str, gate: psycopg.AsyncConnection[Any]
) -> None:
    await qm.set_policy("cc.enqueue", max_concurrent=1)
    # The enqueue commits (admitted at once, owned by qm), then its flush waits.
    await cancel_in_the_flush(dsn, gate, lambda: qm.enqueue_and_wait("cc.enqueue"))
    [row] = await fetch_rows(dsn, "cc.enqueue")
    await status_becomes(qm, row.id, Status.CANCELLED)
    # The slot is free: the next one starts at once.
    assert (await qm.enqueue("cc.enqueue")).status is Status.ACTIVE


async def test_cancelled_wait_started_gives_its_slot_back(
    qm: QueueManager, dsn: str, gate: psycopg.AsyncConnection[Any]
) -> None:
    await qm.set_policy("cc.watch", max_concurrent=1)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # A bare enqueue from SQL (no flush): admitted, nobody owns it.
        cur = await conn.execute("SELECT (fifoq.enqueue('cc.watch')).id")
        row = await cur.fetchone()
        assert row is not None
    execution_id = int(row[0])
    # wait_started takes ownership (committed), then its flush waits.
    await cancel_in_the_flush(dsn, gate, lambda: qm.wait_started(execution_id))
    await status_becomes(qm, execution_id, Status.CANCELLED)
    assert (await qm.enqueue("cc.watch")).status is Status.ACTIVE


async def test_a_caller_timing_out_behind_a_held_queue_lock_leaves_at_once(
    qm: QueueManager, dsn: str
) -> None:
    # A client transaction holds the queue's lock (an enqueue joined to it),
    # so our enqueue statement waits for the lock.
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute("SELECT fifoq.enqueue('cc.locked')")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(6):  # ends a caller stuck until the lock is free
                await asyncio.wait_for(qm.enqueue_and_wait("cc.locked"), timeout=0.3)
        # wait_for returned while the lock is still held: it did not wait for
        # the statement (or the cancel after it) to get the lock.
        assert loop.time() - started < 3
        await holder.commit()
    # Once the lock is free, the enqueue commits and is cancelled after it.
    rows = await wait_until(
        lambda: rows_with_status(dsn, "cc.locked", "cancelled"), message="our enqueue cancelled"
    )
    assert len(rows) == 1


async def rows_with_status(dsn: str, action: str, status: str) -> list[Any]:
    return [r for r in await fetch_rows(dsn, action) if r.status == status]
