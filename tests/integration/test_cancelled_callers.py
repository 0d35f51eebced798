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
    await gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_enqueue_and_wait_gives_its_slot_back(
    qm: QueueManager, dsn: str, gate: psycopg.AsyncConnection[Any]
) -> None:
    await qm.set_policy("cc.enqueue", max_concurrent=1)
    # The enqueue commits (admitted at once, owned by qm), then its flush waits.
    await cancel_in_the_flush(dsn, gate, lambda: qm.enqueue_and_wait("cc.enqueue"))
    [row] = await fetch_rows(dsn, "cc.enqueue")
    assert row.status == "cancelled"
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
    assert (await qm.get(execution_id)).status is Status.CANCELLED
    assert (await qm.enqueue("cc.watch")).status is Status.ACTIVE
