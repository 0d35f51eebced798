"""Queues never block each other (SPEC §3.6), also when an executor ends or a limit rises.

A client transaction that enqueued into queue X and has not committed holds
X's lock. An executor that ends (reaped, or closed) while owning work in X
and in Y must still free Y at once, and a raised pack limit must admit in Y
at once; X's share waits for X (sql/0024, sql/0025).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import pytest
from helpers import wait_until


@dataclass
class Scene:
    """Executor ``executor`` runs one execution in each of iso.x and iso.y, limit 1."""

    conn: psycopg.AsyncConnection[tuple[object, ...]]
    executor: int
    in_x: int
    in_y: int
    waiting_in_y: int

    async def status(self, execution_id: int) -> str:
        return await _status(self.conn, execution_id)

    async def maintain_until(self, execution_id: int, status: str, message: str) -> None:
        await _maintain_until(self.conn, execution_id, status, message)


async def _status(conn: psycopg.AsyncConnection[tuple[object, ...]], execution_id: int) -> str:
    cur = await conn.execute(
        "SELECT status::text FROM fifoq.executions WHERE id = %s", (execution_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def _maintain_until(
    conn: psycopg.AsyncConnection[tuple[object, ...]], execution_id: int, status: str, message: str
) -> None:
    """Run maintenance passes until the execution has ``status``."""

    async def reached() -> bool:
        await conn.execute("SELECT fifoq.maintain()")
        return await _status(conn, execution_id) == status

    await wait_until(reached, 30, interval=0.1, message=message)


async def _one(conn: psycopg.AsyncConnection[tuple[object, ...]], sql: str, *args: object) -> int:
    cur = await conn.execute(sql, args)  # type: ignore[arg-type]
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


@pytest.fixture
async def x_held(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    """A client transaction that enqueued into iso.x and has not committed."""
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        yield holder


@asynccontextmanager
async def _scene(dsn: str, lease: int) -> AsyncIterator[Scene]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        executor = await _one(conn, "SELECT fifoq.register_executor('iso', 'h', 1, %s)", lease)
        for action in ("iso.x", "iso.y"):
            await conn.execute("SELECT fifoq.set_policy(%s, 1)", (action,))
        owned = "SELECT id FROM fifoq.enqueue(%s, NULL, NULL, %s)"
        yield Scene(
            conn,
            executor,
            in_x=await _one(conn, owned, "iso.x", executor),
            in_y=await _one(conn, owned, "iso.y", executor),
            waiting_in_y=await _one(conn, "SELECT id FROM fifoq.enqueue('iso.y')"),
        )


async def test_a_reaped_executor_frees_other_queues_while_one_is_held(
    dsn: str, x_held: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    async with _scene(dsn, lease=1) as scene:
        assert await scene.status(scene.waiting_in_y) == "queued"
        await x_held.execute("SELECT fifoq.enqueue('iso.x')")  # holds iso.x from here
        # The lease (1 s) runs out: the pass reaps it and frees iso.y now.
        await scene.maintain_until(scene.in_y, "abandoned", "iso.y freed while iso.x is held")
        assert await scene.status(scene.waiting_in_y) == "active"
        assert await scene.status(scene.in_x) == "active"  # iso.x waits for its holder
        await x_held.rollback()
        await scene.maintain_until(scene.in_x, "abandoned", "iso.x freed once released")


async def test_a_closing_executor_frees_other_queues_while_one_is_held(
    dsn: str, x_held: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    async with _scene(dsn, lease=60) as scene:
        await x_held.execute("SELECT fifoq.enqueue('iso.x')")  # holds iso.x from here
        async with asyncio.timeout(10):  # it used to wait for iso.x's holder
            freed = await _one(scene.conn, "SELECT fifoq.unregister_executor(%s)", scene.executor)
        assert freed == 1
        assert await scene.status(scene.in_y) == "abandoned"
        assert await scene.status(scene.waiting_in_y) == "active"
        assert await scene.status(scene.in_x) == "active"
        await x_held.commit()
        await scene.maintain_until(scene.in_x, "abandoned", "iso.x swept once released")


async def test_what_an_executor_left_in_a_held_queue_is_swept_however_long_it_was_held(
    dsn: str, x_held: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    # The sweep once looked only at executors ended in the last ten minutes:
    # a queue held longer kept the dead executor's slot taken for good
    # (sql/0026). The ended_at moved back stands for the time held.
    async with _scene(dsn, lease=60) as scene:
        await x_held.execute("SELECT fifoq.enqueue('iso.x')")  # holds iso.x from here
        await scene.conn.execute("SELECT fifoq.unregister_executor(%s)", (scene.executor,))
        await scene.conn.execute(
            "UPDATE fifoq.executors SET ended_at = ended_at - interval '1 hour' WHERE id = %s",
            (scene.executor,),
        )
        await scene.conn.execute("SELECT fifoq.maintain()")
        assert await scene.status(scene.in_x) == "active"  # still held
        await x_held.rollback()
        await scene.maintain_until(scene.in_x, "abandoned", "iso.x swept an hour later")
        marked = await _one(scene.conn, "SELECT count(*) FROM fifoq.executors WHERE leftovers")
        assert marked == 0, "the executor stays marked after its leftovers were swept"


async def test_executors_marked_in_a_held_queue_do_not_slow_every_pass(
    dsn: str, x_held: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    # Each pass retries the marked executors while their queue stays held.
    # Waiting maintain's usual 200 ms for each one's lock made a pass with 10
    # of them take 2 s, and with it every queue's timeouts and repairs; a
    # marked one gets 2 ms (sql/0026).
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT fifoq.set_policy('iso.x', 100)")
        executors = []
        for n in range(10):
            executor = await _one(
                conn, "SELECT fifoq.register_executor(%s, 'h', 1, 60)", f"marked-{n}"
            )
            await conn.execute("SELECT fifoq.enqueue('iso.x', NULL, NULL, %s)", (executor,))
            executors.append(executor)
        await x_held.execute("SELECT fifoq.enqueue('iso.x')")  # holds iso.x from here
        for executor in executors:
            await conn.execute("SELECT fifoq.unregister_executor(%s)", (executor,))
        marked = "SELECT count(*) FROM fifoq.executors WHERE leftovers"
        assert await _one(conn, marked) == 10
        started = time.monotonic()
        await conn.execute("SELECT fifoq.maintain()")
        assert time.monotonic() - started < 1.0, "the pass waited for the held queue's lock"
        await x_held.rollback()
        await conn.execute("SELECT fifoq.maintain()")
        assert await _one(conn, marked) == 0


@pytest.mark.parametrize(
    "raise_limit",
    # A raised pack limit, or the pack's policy deleted so that the default's
    # higher one applies.
    ["SELECT fifoq.set_policy('iso.*', 2)", "SELECT fifoq.delete_policy('iso.*')"],
    ids=["set_policy", "delete_policy"],
)
async def test_raising_a_pack_limit_admits_in_its_other_queues_while_one_is_held(
    dsn: str, x_held: psycopg.AsyncConnection[tuple[object, ...]], raise_limit: str
) -> None:
    # The policy change admits into every queue of the pack; the held one is
    # left to the maintenance pass, once free (sql/0025).
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT fifoq.set_policy('*', 2)")
        await conn.execute("SELECT fifoq.set_policy('iso.*', 1)")
        second = {}
        for action in ("iso.x", "iso.y"):
            await conn.execute("SELECT fifoq.enqueue(%s)", (action,))
            second[action] = await _one(conn, "SELECT id FROM fifoq.enqueue(%s)", action)
        await x_held.execute("SELECT fifoq.enqueue('iso.x')")  # holds iso.x from here
        async with asyncio.timeout(10):  # it used to wait for iso.x's holder
            await conn.execute(raise_limit)  # type: ignore[arg-type]
        assert await _status(conn, second["iso.y"]) == "active"
        assert await _status(conn, second["iso.x"]) == "queued"
        await x_held.rollback()
        await _maintain_until(conn, second["iso.x"], "active", "iso.x admitted once released")
