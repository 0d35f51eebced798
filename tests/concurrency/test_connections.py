"""The LISTEN connection dies or a notification is lost: waiters still wake, none abandoned."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
from helpers import fetch_rows, wait_until
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fifoq import QueueManager, Status


async def terminate(dsn: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        row = await cur.fetchone()
    assert row == (True,)


async def executor_alive(dsn: str, executor_id: int) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT ended_at IS NULL FROM fifoq.executors WHERE id = %s", (executor_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return bool(row[0])


async def queued_and_owned_by(dsn: str, action: str, executor_id: int) -> list[int]:
    rows = await fetch_rows(dsn, action)
    return [r.id for r in rows if r.status == "queued" and r.owner == executor_id]


async def test_terminated_listener_reconnects_keeps_its_executions_and_wakes_the_waiter(
    dsn: str,
) -> None:
    async with (
        QueueManager.connect(dsn, name="waiter", poll_interval=0.2, lease=5.0) as qm,
        QueueManager.connect(dsn, name="other") as other,
    ):
        await other.set_policy("conn.listener", max_concurrent=1)
        blocker = await other.enqueue("conn.listener")
        held = await qm.enqueue_and_wait("conn.other-queue")  # an active one it owns, too
        waiter = asyncio.create_task(qm.enqueue_and_wait("conn.listener"))
        [waiting_id] = await wait_until(
            lambda: queued_and_owned_by(dsn, "conn.listener", qm.executor_id),
            message="waiter queued",
        )
        executor_id, old_pid = qm.executor_id, qm.listener_backend_pid
        assert old_pid is not None

        await terminate(dsn, old_pid)
        await wait_until(
            lambda: qm.listener_backend_pid not in (None, old_pid),
            timeout=qm.lease / 2,
            message="listener reconnected",
        )
        # Same executor, same executions: nothing was abandoned.
        assert qm.executor_id == executor_id
        assert await executor_alive(dsn, executor_id)
        assert (await qm.get(waiting_id)).status is Status.QUEUED
        assert (await qm.get(held.id)).status is Status.ACTIVE
        assert not waiter.done()

        await other.complete(blocker.id)
        started = await asyncio.wait_for(waiter, timeout=2)
        assert (started.id, started.status, started.owner) == (
            waiting_id,
            Status.ACTIVE,
            executor_id,
        )
        await qm.complete(held.id)
        await qm.complete(started.id)
        assert (await qm.stats("conn.listener")).total_abandoned == 0


async def test_waiter_wakes_when_its_turn_comes_while_the_listener_is_down(dsn: str) -> None:
    # Terminate the listener and admit the waiter at once: the notification
    # is sent while nobody listens, so the re-check after reconnecting finds it.
    async with (
        QueueManager.connect(dsn, name="waiter", poll_interval=0.2, lease=5.0) as qm,
        QueueManager.connect(dsn, name="other") as other,
    ):
        await other.set_policy("conn.race", max_concurrent=1)
        for _ in range(5):
            blocker = await other.enqueue("conn.race")
            waiter = asyncio.create_task(qm.enqueue_and_wait("conn.race"))
            await wait_until(
                lambda: queued_and_owned_by(dsn, "conn.race", qm.executor_id),
                message="waiter queued",
            )
            pid = qm.listener_backend_pid
            assert pid is not None
            await terminate(dsn, pid)
            await other.complete(blocker.id)
            started = await asyncio.wait_for(waiter, timeout=3)
            await qm.complete(started.id)
        stats = await qm.stats("conn.race")
        assert (stats.total_completed, stats.total_abandoned) == (10, 0)


async def test_a_lost_notification_is_caught_by_the_heartbeat_poll(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="waiter", poll_interval=0.2, lease=5.0) as qm,
        QueueManager.connect(dsn, name="other") as other,
    ):
        await other.set_policy("conn.lost", max_concurrent=1)
        blocker = await other.enqueue("conn.lost")
        waiter = asyncio.create_task(qm.enqueue_and_wait("conn.lost"))
        [waiting_id] = await wait_until(
            lambda: queued_and_owned_by(dsn, "conn.lost", qm.executor_id),
            message="waiter queued",
        )
        # Hand the slot over by hand, under the queue lock, sending no
        # notification at all: only the poll can tell the waiter.
        ids = {"blocker": blocker.id, "waiting": waiting_id}
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
            await conn.execute(
                "SELECT fifoq.lock_queue(queue_id) FROM fifoq.executions WHERE id = %(blocker)s",
                ids,
            )
            await conn.execute(
                "UPDATE fifoq.executions SET status = 'succeeded', finished_at = clock_timestamp()"
                " WHERE id = %(blocker)s",
                ids,
            )
            await conn.execute(
                "UPDATE fifoq.executions"
                " SET status = 'active', started_at = clock_timestamp(), deadline = NULL"
                " WHERE id = %(waiting)s",
                ids,
            )
            await conn.execute(
                "UPDATE fifoq.queues"
                " SET queued_count = queued_count - 1, total_succeeded = total_succeeded + 1"
                " WHERE id = (SELECT queue_id FROM fifoq.executions WHERE id = %(blocker)s)",
                ids,
            )
        admitted_at = time.monotonic()
        started = await asyncio.wait_for(waiter, timeout=2)
        woke_in = time.monotonic() - admitted_at
        assert started.id == waiting_id and started.status is Status.ACTIVE
        assert started.started_at is not None
        assert woke_in < 4 * qm.poll_interval


async def test_reconnecting_listener_ends_only_stale_sessions_of_its_own_database(
    dsn: str, admin_dsn: str
) -> None:
    """Executor ids restart at 1 in every database; the stale-session cleanup must not cross."""
    other_db = f"test_other_{uuid.uuid4().hex}"
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(other_db),
                sql.Identifier(str(conninfo_to_dict(dsn)["dbname"])),  # already migrated
            )
        )
    other_dsn = make_conninfo(dsn, dbname=other_db)
    try:
        async with QueueManager.connect(other_dsn, name="bystander") as bystander:
            bystander_pid = bystander.listener_backend_pid
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as stale:
                # A session of this database still holding the listener lock of
                # executor 1 (the first one of a fresh database), as a
                # half-open old listener would.
                await stale.execute("SELECT pg_advisory_lock(1718183538, 1)")
                async with QueueManager.connect(dsn, name="newcomer") as qm:
                    assert qm.executor_id == bystander.executor_id == 1
                    assert stale.closed or stale.broken or await _is_terminated(stale)
            # The other database's executor 1 kept its listener connection.
            assert bystander.listener_backend_pid == bystander_pid
            assert await bystander.get_policy("any.thing") is not None
    finally:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other_db))
            )


async def _is_terminated(conn: psycopg.AsyncConnection[Any]) -> bool:
    try:
        await conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False
