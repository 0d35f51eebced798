"""The role of `fifoq migrate --executor-role` runs fifoq and nothing more; passwords never leak."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers import wait_until
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from fifoq import ExecutionCancelled, FifoqError, QueueManager, QueueTimeout, Status
from fifoq.cli import app
from fifoq.migrations import grant_executor_role

from .proxy import BlackholeProxy


@pytest.fixture
def executor_dsn(dsn: str) -> Iterator[str]:
    """A LOGIN role with a password, member of fifoq_executor, connecting over TCP."""
    role = f"fq_exec_{uuid.uuid4().hex[:12]}"
    password = f"pw-{uuid.uuid4().hex}"
    grant_executor_role(dsn)  # what `fifoq migrate --executor-role` runs
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE fifoq_executor").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        owner.execute("CREATE TABLE public.secret (x int)")
        owner.execute("INSERT INTO public.secret VALUES (42)")
    try:
        yield make_conninfo(dsn, host="127.0.0.1", user=role, password=password)
    finally:
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_executor_role_runs_a_full_cycle(executor_dsn: str) -> None:
    async with QueueManager.connect(executor_dsn, name="least", poll_interval=0.1) as qm:
        await qm.set_policy("lp.a", max_concurrent=1)
        assert (await qm.get_policy("lp.a")).max_concurrent == 1
        assert [p.action for p in await qm.list_policies()] == ["lp.a"]
        first = await qm.enqueue_and_wait("lp.a", {"n": 1})
        second = asyncio.create_task(qm.enqueue_and_wait("lp.a", {"n": 2}))
        await wait_until(lambda: queued(qm, 1), timeout=5, message="second waiting")
        third = await qm.enqueue("lp.a", {"n": 3})
        fourth = await qm.enqueue("lp.a", {"n": 4})
        await wait_until(lambda: queued(qm, 3), timeout=5, message="three waiting")
        await qm.complete(first.id, result={"ok": True})
        started = await asyncio.wait_for(second, 5)
        assert started.status is Status.ACTIVE
        assert await qm.cancel(third.id)
        with pytest.raises(ExecutionCancelled):
            await qm.wait_started(third.id, timeout=1)
        with pytest.raises(QueueTimeout):
            await qm.wait_started(fourth.id, timeout=0.1)
        await qm.complete(started.id, error="failed on purpose")
        stats = await qm.stats("lp.a")
        assert (stats.total_enqueued, stats.total_completed, stats.total_failed) == (4, 2, 1)
        assert (stats.total_cancelled, stats.total_timed_out) == (1, 1)
        await qm.refresh_stats()  # SECURITY DEFINER: only the owner may REFRESH
        assert [s.total_enqueued for s in await qm.snapshot_stats()] == [4]
        bare = await qm.enqueue("lp.a")
        assert [e.id for e in await qm.claim(["lp.a"], 5)] == [bare.id]
        await qm.complete(bare.id)
    async with await psycopg.AsyncConnection.connect(executor_dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT fifoq.maintain() IS NOT NULL")
        assert await cur.fetchone() == (True,)


async def queued(qm: QueueManager, n: int) -> bool:
    return (await qm.stats("lp.a")).queue_length == n


REFUSED = [
    "CREATE TABLE fifoq.intruder (x int)",
    "ALTER TABLE fifoq.executions ADD COLUMN x int",
    "DROP TABLE fifoq.executions",
    "DROP VIEW fifoq.queue_stats_live",
    "DROP FUNCTION fifoq.enqueue(text, jsonb, text, bigint)",
    "CREATE OR REPLACE FUNCTION fifoq.cancel(p_id bigint) RETURNS boolean"
    " LANGUAGE sql AS 'SELECT true'",
    "ALTER FUNCTION fifoq.complete(bigint, jsonb, text) SECURITY DEFINER",
    "CREATE INDEX ON fifoq.executions (payload)",
    "DROP TRIGGER executions_owner_alive ON fifoq.executions",
    "DELETE FROM fifoq.executions",
    "SELECT fifoq.delete_policy('*')",  # removing policies is the owner's
    "TRUNCATE fifoq.queues",
    "REFRESH MATERIALIZED VIEW fifoq.queue_stats",
    "SELECT * FROM fifoq._yoyo_migration",
    "SELECT * FROM public.secret",
    "CREATE TABLE public.mine (x int)",
    "CREATE ROLE intruder",
    "ALTER ROLE fifoq_executor SUPERUSER",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_executor_role_is_refused_ddl_and_other_schemas(executor_dsn: str, statement: str) -> None:
    with (
        psycopg.connect(executor_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)  # fixed statements of this test


def assert_no_secret(secret: str, caplog: pytest.LogCaptureFixture, *errors: BaseException) -> None:
    """The secret is in no log record (message, arguments, traceback) and no error chain."""
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        assert secret not in text, f"password in log record {record.name}: {text[:300]}"
    for error in errors:
        text = "".join(traceback.format_exception(error))
        assert secret not in text, f"password in error: {text[:300]}"


async def test_password_never_in_connect_errors(
    executor_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = str(conninfo_to_dict(executor_dsn)["password"])
    unreachable = make_conninfo(executor_dsn, port=str(closed_port()), connect_timeout="2")
    with pytest.raises((FifoqError, psycopg.Error, OSError)) as failed:
        async with QueueManager.connect(unreachable, name="nowhere"):
            pass
    assert_no_secret(password, caplog, failed.value)


async def test_password_never_logged_while_reconnecting(
    executor_dsn: str, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = conninfo_to_dict(executor_dsn)
    password = str(params["password"])
    async with BlackholeProxy(str(params["host"]), int(str(params["port"]))) as proxy:
        proxied = make_conninfo(executor_dsn, port=str(proxy.port))
        async with (
            QueueManager.connect(proxied, name="flaky", lease=5.0, poll_interval=0.2) as qm,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin,
        ):
            await qm.set_policy("lp.r", max_concurrent=1)
            holder = await qm.enqueue_and_wait("lp.r")
            waiter = asyncio.create_task(qm.enqueue_and_wait("lp.r"))
            await wait_until(lambda: qm_waiting(qm), timeout=5, message="a waiter")
            # Every session of the executor dies and new ones are refused for a
            # while: connection errors get logged, with the DSN in reach.
            proxy.refuse_new = True
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (params["user"],),
            )
            await wait_until(lambda: proxy.refused >= 3, timeout=10, message="refused reconnects")
            proxy.refuse_new = False
            await qm.complete(holder.id)
            started = await asyncio.wait_for(waiter, 10)
            await qm.complete(started.id)
    assert any("listener" in r.name for r in caplog.records), "no reconnect was logged"
    assert_no_secret(password, caplog)


async def qm_waiting(qm: QueueManager) -> bool:
    return (await qm.stats("lp.r")).queue_length == 1


def closed_port() -> int:
    """A localhost port that nothing listens on (bound a moment, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_cli_says_what_the_executor_role_may_not_do_in_one_line(
    dsn: str, executor_dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute("SELECT fifoq.set_policy('priv.kept', 2)")
    result = CliRunner().invoke(app, ["policy", "delete", "priv.kept", "--dsn", executor_dsn])
    assert result.exit_code == 1
    # The server's words, without the CONTEXT of the function it failed in.
    assert result.stderr == "fifoq: error: permission denied for table policies\n"
    with psycopg.connect(dsn, autocommit=True) as owner:
        assert owner.execute("SELECT count(*) FROM fifoq.policies").fetchone() == (1,)
