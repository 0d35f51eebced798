"""Connections that die or go silent mid-run: the executor reconnects and wakes its waiters."""

from __future__ import annotations

import asyncio
import random
import time

import psycopg
import pytest
from helpers import assert_fifo_and_limit, executor_row, fetch_rows, wait_until
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fifoq import QueueManager, Status

from .proxy import BlackholeProxy


async def run_with_terminations(dsn: str, *, executions: int, seed: int) -> dict[str, int]:
    """Run ``executions`` enqueue_and_wait + complete while backends are being terminated."""
    rng = random.Random(seed)
    terminated = {"listener": 0, "pooled": 0}
    async with (
        QueueManager.connect(dsn, name="victim", lease=2.0, poll_interval=0.2, max_size=4) as qm,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin,
    ):
        await qm.set_policy("conn.a", max_concurrent=2)
        executor_id = qm.executor_id
        done = asyncio.Event()

        async def caller(n: int) -> None:
            for i in range(n):
                execution = await qm.enqueue_and_wait("conn.a", {"i": i})
                await qm.complete(execution.id)

        async def killer() -> None:
            tick = 0
            while not done.is_set():
                await asyncio.sleep(rng.uniform(0.01, 0.08))
                tick += 1
                listener = qm.listener_backend_pid
                if tick % 3 == 0 and listener is not None:
                    pids = [listener]
                    terminated["listener"] += 1
                else:
                    cur = await admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM %s",
                        (listener,),
                    )
                    pids = [rng.choice(rows)[0]] if (rows := await cur.fetchall()) else []
                    terminated["pooled"] += len(pids)
                for pid in pids:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        callers = 8
        kill_task = asyncio.create_task(killer())
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*(caller(executions // callers) for _ in range(callers)))
        finally:
            done.set()
            await kill_task
        # Not reaped, same executor throughout, nothing abandoned.
        assert qm.executor_id == executor_id
        assert await executor_row(dsn, executor_id) == (None, None)
    rows = await fetch_rows(dsn, "conn.a")
    assert [r.status for r in rows] == ["succeeded"] * executions
    assert_fifo_and_limit(rows, 2)
    return terminated


async def test_terminated_listener_and_pooled_connections_lose_nothing(dsn: str) -> None:
    terminated = await run_with_terminations(dsn, executions=400, seed=5)
    assert terminated["listener"] >= 3 and terminated["pooled"] >= 3, terminated
    print(f"\nterminations: {terminated}")


@pytest.mark.soak
@pytest.mark.timeout(600)  # longer than the suite-wide 300 s
async def test_terminations_soak(dsn: str) -> None:
    terminated = await run_with_terminations(dsn, executions=5000, seed=11)
    print(f"\nterminations: {terminated}")


async def test_half_open_listener_is_detected_replaced_and_its_waiter_woken(dsn: str) -> None:
    params = conninfo_to_dict(dsn)
    async with BlackholeProxy(str(params["host"]), int(str(params["port"]))) as proxy:
        proxied = make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))
        async with (
            QueueManager.connect(dsn, name="holder", poll_interval=0.2) as holder,
            QueueManager.connect(proxied, name="victim", lease=3.0, poll_interval=0.2) as victim,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin,
        ):
            await holder.set_policy("half.a", max_concurrent=1)
            first = await holder.enqueue_and_wait("half.a")
            waiter = asyncio.create_task(victim.enqueue_and_wait("half.a"))
            await wait_until(
                lambda: stats_queued(victim),
                timeout=5,
                message="the victim's execution is waiting",
            )
            cur = await admin.execute(
                "SELECT client_port FROM pg_stat_activity WHERE pid = %s",
                (victim.listener_backend_pid,),
            )
            row = await cur.fetchone()
            assert row is not None
            silenced = proxy.blackhole(upstream_ports={row[0]})
            assert len(silenced) == 1
            pipes_before = len(proxy.pipes)

            # The admission's NOTIFY goes into the black hole.
            silenced_at = time.monotonic()
            await holder.complete(first.id)
            started = await asyncio.wait_for(waiter, timeout=victim.lease)
            took = time.monotonic() - silenced_at

            assert started.status is Status.ACTIVE
            # The listener replaced the silent connection with a new one.
            assert len(proxy.pipes) > pipes_before
            assert await executor_row(dsn, victim.executor_id) == (None, None)
            await victim.complete(started.id)
            print(f"\nhalf-open listener: waiter woken {took:.2f} s after the lost notification")


async def stats_queued(qm: QueueManager) -> bool:
    return (await qm.stats("half.a")).queue_length == 1
