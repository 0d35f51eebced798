"""enqueue(..., conn=...) joins the caller's transaction: it exists only if that commits."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest
from helpers import counts, wait_until

from fifoq import QueueFull, QueueManager, QueueTimeout, Status, UnknownExecution


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


async def test_enqueue_in_a_committed_transaction_exists_after_commit(
    qm: QueueManager, dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        await conn.commit()
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (1)")
            execution = await qm.enqueue("tx.ship", {"order": 1}, conn=conn)
            assert execution.status is Status.ACTIVE
            # Not visible to anyone else before the commit.
            with pytest.raises(UnknownExecution):
                await qm.get(execution.id)
        stored = await qm.get(execution.id)
    assert (stored.status, stored.payload, stored.seq) == (Status.ACTIVE, {"order": 1}, 1)
    stats = await qm.stats("tx.ship")
    assert (stats.total_enqueued, stats.active_count) == (1, 1)


async def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("tx.roll", max_concurrent=1)
    blocker = await qm.enqueue("tx.roll")
    before = await counts(dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(Boom):
            async with conn.transaction():
                queued = await qm.enqueue("tx.roll", {"n": 1}, conn=conn)
                fresh = await qm.enqueue("tx.new-queue", conn=conn)
                assert (queued.status, fresh.status) == (Status.QUEUED, Status.ACTIVE)
                raise Boom
    assert await counts(dsn) == before  # no execution, no queue, no counter moved
    for execution in (queued, fresh):
        with pytest.raises(UnknownExecution):
            await qm.get(execution.id)
    # The queue goes on as if nothing happened: the next one gets the next seq.
    after = await qm.enqueue("tx.roll")
    assert after.seq == blocker.seq + 1
    await qm.complete(blocker.id)
    assert (await qm.get(after.id)).status is Status.ACTIVE


@pytest.mark.parametrize("many", [False, True], ids=["enqueue", "enqueue_many"])
@pytest.mark.parametrize("opened", ["block", "implicit", "pipeline"])
async def test_a_refused_enqueue_leaves_the_callers_transaction_usable(
    qm: QueueManager, dsn: str, many: bool, opened: str
) -> None:
    # A refusal undoes only the enqueue (a savepoint around it), as a caller
    # who catches QueueFull and goes on in the same transaction expects; and
    # it lets go of the queue's lock at once, not when the caller commits.
    # The caller's transaction is a `conn.transaction()` block, or the one
    # psycopg opens for the enqueue as the first statement (not autocommit),
    # or a block in pipeline mode with a statement still queued.
    await qm.set_policy("tx.full", max_concurrent=1, max_queue_length=0)
    await qm.enqueue("tx.full")  # takes the one slot; nobody may wait
    before = await counts(dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        await conn.commit()
        async with contextlib.AsyncExitStack() as stack:
            if opened == "pipeline":
                await stack.enter_async_context(conn.pipeline())
            if opened != "implicit":
                await stack.enter_async_context(conn.transaction())
                await conn.execute("INSERT INTO orders VALUES (1)")
            with pytest.raises(QueueFull):
                if many:
                    await qm.enqueue_many("tx.full", [{"order": 1}], conn=conn)
                else:
                    await qm.enqueue("tx.full", {"order": 1}, conn=conn)
            await conn.execute("INSERT INTO orders VALUES (2)")
            # Still inside the caller's transaction: another enqueue on the
            # same queue is answered now, not after the caller's commit.
            with pytest.raises(QueueFull):
                await asyncio.wait_for(qm.enqueue("tx.full"), 10)
        if opened == "implicit":
            await conn.commit()
        cur = await conn.execute("SELECT array_agg(id ORDER BY id) FROM orders")
        assert await cur.fetchone() == ([2] if opened == "implicit" else [1, 2],)
    assert await counts(dsn) == before


async def test_a_callers_own_missing_table_is_not_taken_for_a_missing_schema(
    qm: QueueManager, dsn: str
) -> None:
    # In pipeline mode the caller's queued statement fails during the
    # enqueue: its error stays psycopg's, though its text mentions fifoq.
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable, match="no_such_orders"):
            async with conn.pipeline(), conn.transaction():
                await conn.execute("INSERT INTO no_such_orders (fifoq_execution_id) VALUES (1)")
                await qm.enqueue("tx.mine", conn=conn)


async def test_a_waiters_timeout_still_bounds_the_call_while_a_transaction_holds_its_queue(
    qm: QueueManager, dsn: str
) -> None:
    # Timing the execution out needs the queue's lock, which an open
    # enqueue(conn=...) made while the waiter waits holds until its
    # transaction ends. The waiter raises QueueTimeout all the same, about a
    # second after its timeout; the execution is timed out once the queue is
    # free.
    await qm.set_policy("tx.held", max_concurrent=1)
    await qm.enqueue("tx.held")
    waiter = asyncio.create_task(qm.enqueue_and_wait("tx.held", timeout=1.0))

    async def waiting() -> bool:
        return (await qm.stats("tx.held")).queue_length == 1

    await wait_until(waiting, 10, message="the waiter's execution is queued")
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await qm.enqueue("tx.held", conn=holder)  # holds tx.held from here
        async with asyncio.timeout(10):  # it used to wait for the holder
            with pytest.raises(QueueTimeout, match=r"did not start within 1\.0 s"):
                await waiter
        (left,) = [e for e in await qm.list_executions("tx.held") if e.status is Status.QUEUED]
        await holder.rollback()

    async def timed_out() -> bool:
        return (await qm.get(left.id)).status is Status.TIMED_OUT

    await wait_until(timed_out, 10, message="timed out once the queue was free")


@pytest.mark.parametrize("call", ["wait_started", "enqueue_and_wait"])
async def test_a_waiters_timeout_bounds_the_call_when_its_queue_is_held_from_the_start(
    qm: QueueManager, dsn: str, call: str
) -> None:
    # Taking the execution (wait_started's watch, enqueue_and_wait's
    # enqueue) needs the queue's lock too: the timeout bounds that wait as
    # well, and the execution is timed out once the queue is free.
    await qm.set_policy("tx.held_first", max_concurrent=1)
    await qm.enqueue("tx.held_first")
    waiting = await qm.enqueue("tx.held_first")
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await qm.enqueue("tx.held_first", conn=holder)  # holds tx.held_first from here
        async with asyncio.timeout(10):  # it used to wait for the holder
            with pytest.raises(QueueTimeout, match="another transaction holds its queue"):
                if call == "wait_started":
                    await qm.wait_started(waiting.id, timeout=0.5)
                else:
                    await qm.enqueue_and_wait("tx.held_first", timeout=0.5)
        await holder.rollback()

    async def given_up_timed_out() -> bool:
        return (await qm.stats("tx.held_first")).total_timed_out == 1

    # Once the queue is free the given-up execution is timed out (with
    # enqueue_and_wait, once its enqueue has gone in); the one the client
    # enqueued before the holder's waits on.
    await wait_until(given_up_timed_out, 10, message="the given-up execution timed out")
    live = await qm.list_executions("tx.held_first")
    waiting_on = [Status.QUEUED] if call == "enqueue_and_wait" else []
    assert [e.status for e in live] == [Status.ACTIVE, *waiting_on]
