"""Deferred operations (sql/0006): the lock ends before the flush, nobody hears before it.

A state change on fifoq's own connections commits without waiting for the
disk, then ``CALL fifoq.flush_and_notify()`` makes it durable and only then
sends the owner notifications it held back. These tests pin the three
promises that keep this safe: notifications wait for the flush, a change
whose flush was cut off is neither repeated nor reported if it was lost, and
a caller's own pool (not in autocommit) works too.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers import wait_until
from psycopg_pool import AsyncConnectionPool

from fifoq import FifoqError, Outcome, QueueManager, Status


async def scalar(conn: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> Any:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def test_an_owner_hears_of_its_admission_only_after_the_flush(dsn: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener,
    ):
        await conn.execute("SELECT fifoq.set_policy('deferred.a', 1)")
        owner = await scalar(conn, "SELECT fifoq.register_executor('t', 'h', 1, 60)")
        running = await scalar(conn, "SELECT id FROM fifoq.enqueue('deferred.a')")
        waiting = await scalar(
            conn, "SELECT id FROM fifoq.enqueue('deferred.a', NULL, NULL, %s)", owner
        )
        heard: list[str] = []
        listener.add_notify_handler(lambda n: heard.append(n.payload))
        await listener.execute(f"LISTEN fifoq_executor_{int(owner)}")

        # A change rolled back after holding a notification leaves nothing held.
        with pytest.raises(psycopg.errors.DivisionByZero):
            async with conn.transaction():
                await conn.execute("SELECT fifoq.defer_flush()")
                await conn.execute(
                    "SELECT fifoq.notify_owner(%s, %s, 'cancelled')", (owner, waiting)
                )
                await conn.execute("SELECT 1 / 0")

        # Step 1: the completion commits and admits the waiter ...
        status = await scalar(conn, "SELECT status FROM fifoq.complete_deferred(%s)", running)
        assert status == "succeeded"
        assert await scalar(conn, "SELECT status FROM fifoq.executions WHERE id = %s", waiting) == (
            "active"
        )
        # ... but its owner is not told yet: a statement on the listening
        # session delivers every notification committed before it.
        await listener.execute("SELECT 1")
        assert heard == []

        # Steps 2 and 3: on disk, then told, and told only of the admission.
        await conn.execute("CALL fifoq.flush_and_notify()")

        async def told() -> list[str]:
            await listener.execute("SELECT 1")
            return heard

        await wait_until(told, message="the owner was notified after the flush")
        assert len(heard) == 1 and heard[0].startswith(f"{waiting} active "), heard


async def test_the_deferred_statement_commits_without_waiting_and_the_plain_one_waits(
    dsn: str,
) -> None:
    # A transaction's commit waits for the disk unless synchronous_commit is
    # off in it: a trigger records the setting inside each enqueue.
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # The test server may run with it off (no durability needed there).
        await conn.execute("SET synchronous_commit = on")
        await conn.execute("CREATE TABLE seen (setting text)")
        await conn.execute(
            "CREATE FUNCTION record_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO seen VALUES (current_setting('synchronous_commit'));"
            " RETURN NULL; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER record AFTER INSERT ON fifoq.executions"
            " FOR EACH ROW EXECUTE FUNCTION record_commit_mode()"
        )
        await conn.execute("SELECT fifoq.enqueue_deferred('deferred.mode')")
        await conn.execute("SELECT fifoq.enqueue('deferred.mode')")
        cur = await conn.execute("SELECT setting FROM seen")
        assert [r[0] for r in await cur.fetchall()] == ["off", "on"]
        # The session's own setting is back once the deferred transaction ended.
        assert await scalar(conn, "SHOW synchronous_commit") == "on"


async def test_the_flush_puts_the_deferred_commit_on_disk(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SET synchronous_commit = on")
        # Catch a deferred commit before the WAL writer flushed it by itself
        # (it does so within wal_writer_delay): then only the flush can.
        for _ in range(50):
            await conn.execute("SELECT fifoq.enqueue_deferred('deferred.disk')")
            written = await scalar(conn, "SELECT pg_current_wal_insert_lsn()")
            if await scalar(conn, "SELECT pg_current_wal_flush_lsn() < %s", written):
                break
        else:
            pytest.fail("every deferred commit was already flushed when it returned")
        await conn.execute("CALL fifoq.flush_and_notify()")
        assert await scalar(conn, "SELECT pg_current_wal_flush_lsn() >= %s", written)


UNDO_COMPLETION = (
    "UPDATE fifoq.executions SET status = 'active', finished_at = NULL WHERE status = 'succeeded'"
)
UNDO_OWNERSHIP = "UPDATE fifoq.executions SET owner = NULL WHERE status = 'active'"


async def install_flush_fault(dsn: str, *, undo: str = "") -> None:
    """Make the next flush end its own connection, after running ``undo`` (if any).

    ``undo`` turns the change back the way a server crash before the flush
    would have, so the client's check of what survived can be tested.
    """
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE flush_faults (undo text)")
        await conn.execute("INSERT INTO flush_faults VALUES (%s)", (undo,))
        await conn.execute(
            "ALTER PROCEDURE fifoq.flush_and_notify() RENAME TO real_flush_and_notify"
        )
        await conn.execute(
            """
            CREATE PROCEDURE fifoq.flush_and_notify() LANGUAGE plpgsql AS $$
            DECLARE v_undo text;
            BEGIN
                DELETE FROM public.flush_faults RETURNING undo INTO v_undo;
                IF FOUND THEN
                    IF v_undo <> '' THEN
                        EXECUTE v_undo;
                    END IF;
                    COMMIT;
                    PERFORM pg_terminate_backend(pg_backend_pid());
                    PERFORM pg_sleep(5);  -- ended by the termination above
                END IF;
                CALL fifoq.real_flush_and_notify();
            END $$
            """
        )


async def test_a_connection_lost_in_the_flush_neither_repeats_nor_drops_the_change(
    dsn: str,
) -> None:
    await install_flush_fault(dsn)
    async with QueueManager.connect(dsn, max_size=2) as qm:
        execution = await qm.enqueue("deferred.lost", {"n": 1})
        assert execution.status is Status.ACTIVE
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            assert await scalar(conn, "SELECT count(*) FROM public.flush_faults") == 0
            # Once, not twice: the enqueue was not run again on another connection.
            assert await scalar(conn, "SELECT count(*) FROM fifoq.executions") == 1
        assert (await qm.get(execution.id)).status is Status.ACTIVE
        await qm.complete(execution.id)  # and the manager carries on


async def test_a_completion_lost_before_its_flush_is_reported_as_an_error(dsn: str) -> None:
    async with QueueManager.connect(dsn, max_size=2) as qm:
        execution = await qm.enqueue("deferred.crash")
        await install_flush_fault(dsn, undo=UNDO_COMPLETION)
        with pytest.raises(FifoqError, match=f"lost the change of execution {execution.id}"):
            await qm.complete(execution.id)
        # It really is still active, so completing it again is right.
        assert (await qm.get(execution.id)).status is Status.ACTIVE


async def test_an_ownership_lost_before_its_flush_is_reported_as_an_error(dsn: str) -> None:
    async with QueueManager.connect(dsn, max_size=2) as qm:
        execution = await qm.enqueue("deferred.owner")  # active, nobody owns it
        await install_flush_fault(dsn, undo=UNDO_OWNERSHIP)
        with pytest.raises(FifoqError, match=f"lost the change of execution {execution.id}"):
            await qm.wait_started(execution.id)
        assert (await qm.get(execution.id)).owner is None


async def test_a_callers_pool_without_autocommit_works_and_is_left_as_it_was(dsn: str) -> None:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        await pool.open(wait=True)
        async with QueueManager.connect(pool=pool) as qm:
            await qm.set_policy("deferred.pool", max_concurrent=1)
            first = await qm.enqueue_and_wait("deferred.pool")
            second = await qm.enqueue("deferred.pool")
            await qm.complete(first.id)
            started = await qm.wait_started(second.id, timeout=5)
            assert started.status is Status.ACTIVE
            assert await qm.cancel(second.id) is True
        async with pool.connection() as conn:
            assert conn.autocommit is False


async def kept_connection(qm: QueueManager) -> psycopg.AsyncConnection[Any]:
    """The executor's kept connection, once open: a worker call starts opening it."""
    assert qm._kept is not None
    if qm._kept.connection is None:
        await qm.claim(None, 0)  # finds none open, so runs on the pool and opens one
    kept = qm._kept
    return await wait_until(lambda: kept.connection, message="the kept connection to open")


async def test_a_workers_kept_connection_lost_in_the_flush_neither_repeats_nor_drops_it(
    dsn: str,
) -> None:
    # complete_and_claim runs on the executor's kept connection (not the
    # pool); a flush cut off there is confirmed from the pool like any other.
    async with QueueManager.connect(dsn, max_size=2) as qm:
        await qm.set_policy("deferred.kept", max_concurrent=1)
        first, second = await qm.enqueue_many("deferred.kept", [1, 2])
        await kept_connection(qm)
        await install_flush_fault(dsn)
        completed, claimed = await qm.complete_and_claim([Outcome(first.id)], None, 1)
        assert [(e.id, e.status) for e in completed] == [(first.id, Status.SUCCEEDED)]
        assert [(e.id, e.status, e.owner) for e in claimed] == [
            (second.id, Status.ACTIVE, qm.executor_id)
        ]
        assert qm._kept is not None and qm._kept.connection is None  # the fault ended it
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            assert await scalar(conn, "SELECT count(*) FROM public.flush_faults") == 0
            assert await scalar(conn, "SELECT count(*) FROM fifoq.executions") == 2
        # A new kept connection is opened, and the worker carries on.
        await kept_connection(qm)
        completed, claimed = await qm.complete_and_claim([Outcome(second.id)], None, 1)
        assert [e.status for e in completed] == [Status.SUCCEEDED] and claimed == []


async def test_a_kept_connection_that_was_terminated_is_replaced(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, max_size=2) as qm,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin,
    ):
        await qm.set_policy("deferred.terminated", max_concurrent=1)
        executions = await qm.enqueue_many("deferred.terminated", list(range(4)))
        assert qm._kept is not None and qm._kept.connection is None  # not before a worker call
        first = (await kept_connection(qm)).info.backend_pid
        done, claimed = await qm.complete_and_claim([Outcome(executions[0].id)], None, 1)
        assert [e.id for e in claimed] == [executions[1].id]
        await admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        # Lost between statements: this one is retried on the pool...
        done, claimed = await qm.complete_and_claim([Outcome(executions[1].id)], None, 1)
        assert [e.id for e in claimed] == [executions[2].id]
        # ...and a new kept connection is opened for the next.
        second = (await kept_connection(qm)).info.backend_pid
        assert second != first
        done, claimed = await qm.complete_and_claim([Outcome(executions[2].id)], None, 1)
        assert [e.id for e in claimed] == [executions[3].id]
        assert done[0].status is Status.SUCCEEDED
        assert qm._kept.connection is not None
        assert qm._kept.connection.info.backend_pid == second
