"""PostgreSQL stopped and started mid-run: executors reconnect, waiters resume, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest
from helpers import assert_fifo_and_limit, fetch_rows, wait_until

import fifoq
from fifoq import QueueManager
from fifoq.embedded import EmbeddedPostgres

LEASE = 2.0


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own: restarting the session's would disturb the other tests."""
    with EmbeddedPostgres(durable=False) as pg:
        fifoq.migrate(pg.dsn)
        yield pg


async def restart_run(pg: EmbeddedPostgres, *, per_caller: int, restarts: int) -> dict[str, int]:
    dsn = pg.dsn
    figures = {"restarts": 0, "executions": 0}
    async with (
        QueueManager.connect(dsn, name="a", lease=LEASE, poll_interval=0.2, max_size=4) as qa,
        QueueManager.connect(dsn, name="b", lease=LEASE, poll_interval=0.2, max_size=4) as qb,
    ):
        await qa.set_policy("restart.a", max_concurrent=2)
        executors = (qa.executor_id, qb.executor_id)
        restarted = asyncio.Event()

        async def caller(qm: QueueManager, n: int) -> None:
            # At least n each, and on until every restart happened.
            i = 0
            while i < n or not restarted.is_set():
                execution = await qm.enqueue_and_wait("restart.a", {"i": i})
                await asyncio.sleep(0.002)  # hold the slot a little: waiters pile up
                await qm.complete(execution.id)
                figures["executions"] += 1
                i += 1

        async def restarter() -> None:
            for _ in range(restarts):
                # Restart while executions are waiting and active.
                await wait_until(
                    lambda: queue_has_waiters(qa), timeout=30, message="executions waiting"
                )
                await asyncio.to_thread(pg.stop, keep_data=True)
                # Down until both executors noticed (their listeners are reconnecting).
                await wait_until(
                    lambda: qa.listener_backend_pid is None and qb.listener_backend_pid is None,
                    timeout=10,
                    message="listeners noticed the shutdown",
                )
                await asyncio.to_thread(pg.start)
                figures["restarts"] += 1
            restarted.set()

        callers = [caller(qm, per_caller) for qm in (qa, qb) for _ in range(3)]
        restart_task = asyncio.create_task(restarter())
        async with asyncio.timeout(120):
            await asyncio.gather(*callers, restart_task)
        # Both executors lived through the restarts as themselves.
        assert (qa.executor_id, qb.executor_id) == executors
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM fifoq.executors WHERE ended_at IS NULL AND id = ANY(%s)",
                (list(executors),),
            )
            assert await cur.fetchone() == (2,)
    rows = await fetch_rows(dsn, "restart.a")
    assert [r.status for r in rows] == ["succeeded"] * figures["executions"]
    assert_fifo_and_limit(rows, 2)
    return figures


async def queue_has_waiters(qm: QueueManager) -> bool:
    return (await qm.stats("restart.a")).queue_length > 0


async def test_server_restart_mid_run_loses_nothing(server: EmbeddedPostgres) -> None:
    figures = await restart_run(server, per_caller=40, restarts=2)
    assert figures["restarts"] == 2
    print(f"\nrestart run: {figures}")


@pytest.mark.soak
@pytest.mark.timeout(600)  # longer than the suite-wide 300 s
async def test_server_restart_soak(server: EmbeddedPostgres) -> None:
    figures = await restart_run(server, per_caller=400, restarts=10)
    print(f"\nrestart run: {figures}")
