"""A connection lost with no SQLSTATE after the server committed: the reply never came.

Each test routes one client through a proxy, lets a chosen state change
reach the server and commit, swallows its reply, waits (from another
connection) until the change is visible, then resets the client side of
that connection: the client sees "server closed the connection
unexpectedly" with no SQLSTATE, exactly as after a network drop or a
proxy's RST. The statement did commit, so running it again blindly would
do it twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import pytest
from helpers import wait_until
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from fifoq import (
    App,
    Execution,
    InvalidTransition,
    Outcome,
    OutcomeUnknown,
    QueueManager,
    Status,
)
from fifoq.worker import Worker

from .proxy import BlackholeProxy, Pipe

DEADLINE = 10.0  # for conditions that take milliseconds when things work
T = TypeVar("T")


@asynccontextmanager
async def proxied(dsn: str) -> AsyncIterator[tuple[BlackholeProxy, str]]:
    params = conninfo_to_dict(dsn)
    async with BlackholeProxy(str(params["host"]), int(str(params["port"]))) as proxy:
        yield proxy, make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))


async def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)  # type: ignore[arg-type]
        return await cur.fetchall()


async def cut_once_committed(muted: asyncio.Future[Pipe], committed: Any) -> None:
    """Once the muted statement's change is visible elsewhere, reset its connection."""
    pipe = await asyncio.wait_for(muted, DEADLINE)
    await wait_until(committed, DEADLINE, message="the change committed on the server")
    pipe.cut()


async def lost_reply(
    proxy: BlackholeProxy, marker: bytes, committed: Any, call: Coroutine[Any, Any, T]
) -> T:
    """Await ``call``; its statement that sends ``marker`` commits and its reply is lost.

    The reply is swallowed, and the connection reset once ``committed()``
    holds (seen from another connection).
    """
    muted = proxy.mute_when_sent(marker)
    cutter = asyncio.create_task(cut_once_committed(muted, committed))
    try:
        return await asyncio.wait_for(call, DEADLINE)
    finally:
        await cutter


async def live(dsn: str, action: str) -> list[tuple[Any, ...]]:
    return await rows(
        dsn,
        "SELECT id, status::text, owner FROM fifoq.execution_details WHERE action = %s ORDER BY id",
        (action,),
    )


# -- 4. bare enqueue -------------------------------------------------------


async def test_bare_enqueue_whose_reply_was_lost_is_stored_once(dsn: str) -> None:
    async with proxied(dsn) as (proxy, via), QueueManager.connect(via, name="producer") as qm:
        await qm.set_policy("amb.bare", max_concurrent=1)

        async def one_row() -> bool:
            return len(await live(dsn, "amb.bare")) == 1

        execution = await lost_reply(
            proxy, b"fifoq.enqueue_deferred(", one_row, qm.enqueue("amb.bare", {"n": 1})
        )
        stored = await live(dsn, "amb.bare")
        assert [r[0] for r in stored] == [execution.id], stored


async def test_bare_enqueue_many_whose_reply_was_lost_is_stored_once(dsn: str) -> None:
    async with proxied(dsn) as (proxy, via), QueueManager.connect(via, name="producer") as qm:

        async def three_rows() -> bool:
            return len(await live(dsn, "amb.many")) == 3

        executions = await lost_reply(
            proxy,
            b"fifoq.enqueue_many_deferred(",
            three_rows,
            qm.enqueue_many("amb.many", [1, 2, 3]),
        )
        stored = await live(dsn, "amb.many")
        assert [r[0] for r in stored] == [e.id for e in executions], stored
        assert [e.payload for e in executions] == [1, 2, 3]


async def enqueue_lost_behind_the_lock(
    dsn: str, proxy: BlackholeProxy, qm: QueueManager, first: Execution
) -> Execution:
    """Enqueue into ``first``'s queue while it is locked; that attempt loses its reply.

    The lost attempt's statement waits for the queue lock on the server,
    which did not notice the drop; the call settles and retries (the retry
    waits too); then the lock is freed. Returns what the call returned, once
    the lost attempt's fate is known: its backend gone, or its statement
    committed after all (a third row).
    """
    waiting_sql = (
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE '%%enqueue_deferred(%%' AND pid <> pg_backend_pid()"
    )
    async with await psycopg.AsyncConnection.connect(dsn) as admin:
        cur = await admin.execute(
            "SELECT queue_id FROM fifoq.executions WHERE id = %s", (first.id,)
        )
        row = await cur.fetchone()
        assert row is not None
        await admin.execute("SELECT fifoq.lock_queue(%s)", (row[0],))
        muted = proxy.mute_when_sent(b"fifoq.enqueue_deferred(")
        seen: list[int] = []

        async def waiting() -> list[int]:
            pids = [r[0] for r in await rows(dsn, waiting_sql)]
            seen.extend(pids)
            return pids

        lost = asyncio.create_task(cut_once_committed(muted, waiting))
        call = asyncio.create_task(qm.enqueue(first.action, {"n": 2}))
        await lost
        old = seen[0]

        async def retry_waiting() -> bool:
            return (await waiting()) not in ([], [old])

        await wait_until(retry_waiting, DEADLINE, message="the retry waits for the lock")
        await admin.rollback()  # the lock is free
    second = await asyncio.wait_for(call, DEADLINE)

    async def ended_or_committed() -> bool:
        backend = await rows(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (old,))
        return not backend or len(await live(dsn, first.action)) > 2

    await wait_until(ended_or_committed, DEADLINE, message="the lost attempt's fate")
    return second


async def test_lost_enqueue_still_waiting_on_the_server_is_ended_not_doubled(dsn: str) -> None:
    """The server did not notice the drop: the statement waits for a queue lock there.

    Looked for at once it is not found; run again, both would commit once
    the lock is free. The lost backend is ended first, so only the retry does.
    """
    async with proxied(dsn) as (proxy, via), QueueManager.connect(via, name="producer") as qm:
        first = await qm.enqueue("amb.locked")
        second = await enqueue_lost_behind_the_lock(dsn, proxy, qm, first)
        assert [r[0] for r in await live(dsn, "amb.locked")] == [first.id, second.id]


async def test_lost_enqueue_that_reaches_the_server_late_is_not_doubled(dsn: str) -> None:
    """The reset comes before the statement reaches the server (a packet still in flight).

    When the client settles, the lost backend is idle, and nothing carries
    the token yet; the enqueue runs again. The statement then arrives and
    runs on the old backend unless that backend was ended too: ended idle
    or not, it never runs anything again.
    """
    async with proxied(dsn) as (proxy, via), QueueManager.connect(via, name="producer") as qm:
        late = proxy.reset_when_sent(b"fifoq.enqueue_deferred(", 0.5)
        execution = await asyncio.wait_for(qm.enqueue("amb.late", {"n": 1}), DEADLINE)
        pipe = await asyncio.wait_for(late, DEADLINE)

        async def ended_or_ran() -> bool:
            # Its backend gone (it never runs the statement), or the
            # statement ran there after all.
            backend = await rows(
                dsn, "SELECT 1 FROM pg_stat_activity WHERE client_port = %s", (pipe.upstream_port,)
            )
            return not backend or len(await live(dsn, "amb.late")) > 1

        await wait_until(ended_or_ran, DEADLINE, message="the late statement's fate")
        assert [r[0] for r in await live(dsn, "amb.late")] == [execution.id]


async def test_lost_enqueue_on_a_connection_opened_during_the_call_is_ended(dsn: str) -> None:
    """The lost attempt ran on a connection the pool opened after the call began.

    The first attempt finds its pooled connection terminated (57P01, never
    ran: tried again); the pool opens another, whose statement waits for a
    queue lock and loses its reply. That backend is the call's own although
    it started after the call began: it must be ended, or it commits when
    the lock is free, beside the retry.
    """
    async with (
        proxied(dsn) as (proxy, via),
        # A pool that opens connections only on demand, used by nothing but
        # the calls below (no executor: no listener, no maintenance): the
        # retry's connection is opened during the call, never before it.
        AsyncConnectionPool(via, min_size=0, max_size=2, open=False) as pool,
        QueueManager.connect(pool=pool, register_executor=False) as qm,
    ):
        first = await qm.enqueue("amb.fresh")
        # End the pool's idle connection: the call's first attempt finds it dead.
        ended = await rows(
            dsn,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
        )
        assert ended and all(r[0] for r in ended)
        # New connections open 0.2 s late: the retry's backend starts well
        # after the call began, not within the clocks' skew of it.
        proxy.accept_delay = 0.2
        second = await enqueue_lost_behind_the_lock(dsn, proxy, qm, first)
        assert [r[0] for r in await live(dsn, "amb.fresh")] == [first.id, second.id]


async def test_enqueue_and_wait_whose_reply_was_lost_leaves_no_orphan(dsn: str) -> None:
    async with proxied(dsn) as (proxy, via), QueueManager.connect(via, name="waiter") as qm:
        await qm.set_policy("amb.owned", max_concurrent=1)

        async def one_row() -> bool:
            return len(await live(dsn, "amb.owned")) == 1

        # The first attempt's execution took the only slot: a blind retry
        # would wait behind it for good.
        execution = await lost_reply(
            proxy,
            b"fifoq.enqueue_deferred(",
            one_row,
            qm.enqueue_and_wait("amb.owned", {"n": 1}),
        )
        assert execution.status is Status.ACTIVE
        assert execution.owner == qm.executor_id
        assert [r[0] for r in await live(dsn, "amb.owned")] == [execution.id]
        await qm.complete(execution.id)
        # The slot is free again: nothing else holds it.
        nxt = await asyncio.wait_for(qm.enqueue_and_wait("amb.owned", {"n": 2}), DEADLINE)
        await qm.complete(nxt.id)


# -- 2. completions ----------------------------------------------------------


async def test_complete_whose_reply_was_lost_returns_the_completion(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="direct") as direct,
        proxied(dsn) as (proxy, via),
        QueueManager.connect(via, name="completer") as qm,
    ):
        execution = await direct.enqueue("amb.complete")
        assert execution.status is Status.ACTIVE

        async def succeeded() -> bool:
            return (await direct.get(execution.id)).status is Status.SUCCEEDED

        done = await lost_reply(
            proxy,
            b"fifoq.complete_deferred(",
            succeeded,
            qm.complete(execution.id, result={"ok": 1}),
        )
        assert (done.id, done.status, done.result) == (execution.id, Status.SUCCEEDED, {"ok": 1})


async def test_complete_many_whose_reply_was_lost_returns_the_completions(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="direct") as direct,
        proxied(dsn) as (proxy, via),
        QueueManager.connect(via, name="completer") as qm,
    ):
        first, second = await direct.enqueue_many("amb.many_complete", [1, 2])

        async def finished() -> bool:
            return (await direct.get(second.id)).status is Status.FAILED

        done = await lost_reply(
            proxy,
            b"fifoq.complete_many_deferred(",
            finished,
            qm.complete_many([Outcome(first.id, result=1), Outcome(second.id, error="no")]),
        )
        assert [(e.id, e.status) for e in done] == [
            (first.id, Status.SUCCEEDED),
            (second.id, Status.FAILED),
        ]


async def test_complete_of_someone_elses_outcome_after_a_lost_reply_is_refused(dsn: str) -> None:
    """The reconciliation returns only the outcome asked for, not any finished one."""
    async with (
        QueueManager.connect(dsn, name="direct") as direct,
        proxied(dsn) as (proxy, via),
        QueueManager.connect(via, name="completer") as qm,
    ):
        execution = await direct.enqueue("amb.other")
        # Someone else completed it (failed) before ours (succeeded) is sent:
        # ours is refused on the server, and its refusal is the lost reply.
        await direct.complete(execution.id, error="theirs")

        async def sent() -> bool:
            return True

        with pytest.raises(InvalidTransition):
            await lost_reply(
                proxy, b"fifoq.complete_deferred(", sent, qm.complete(execution.id, result="mine")
            )


async def test_cancel_whose_reply_was_lost_says_it_cancelled(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="direct") as direct,
        proxied(dsn) as (proxy, via),
        QueueManager.connect(via, name="canceller") as qm,
    ):
        execution = await direct.enqueue("amb.cancel")

        async def cancelled() -> bool:
            return (await direct.get(execution.id)).status is Status.CANCELLED

        cut = lost_reply(proxy, b"fifoq.cancel_deferred(", cancelled, qm.cancel(execution.id))
        assert await cut is True


# -- 1. worker claims ------------------------------------------------------

app = App("ambiguous")


@app.action("amb.work", max_concurrent=2)
async def work(payload: Any) -> Any:
    return payload


@app.action("amb.chain", max_concurrent=1)
async def chain(payload: Any) -> Any:
    return payload


@asynccontextmanager
async def running_worker(via: str, **kwargs: Any) -> AsyncIterator[Worker]:
    worker = Worker(app, via, claim_interval=0.2, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        await worker.wait_ready()
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def test_worker_claim_whose_reply_was_lost_runs_what_it_took(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="producer") as producer,
        proxied(dsn) as (proxy, via),
    ):
        await producer.set_policy("amb.work", max_concurrent=2)
        executions = await producer.enqueue_many("amb.work", [1, 2])
        muted = proxy.mute_when_sent(b"fifoq.claim_deferred(")

        async def both_owned() -> bool:
            found = await live(dsn, "amb.work")
            return all(r[1] == "active" and r[2] is not None for r in found)

        cutter = asyncio.create_task(cut_once_committed(muted, both_owned))
        async with running_worker(via, concurrency=2, actions=["amb.work"]):
            await cutter

            async def all_done() -> bool:
                found = [await producer.get(e.id) for e in executions]
                return all(e.status is Status.SUCCEEDED for e in found)

            await wait_until(all_done, DEADLINE, message="the claimed executions ran")


async def test_worker_completion_whose_reply_was_lost_runs_what_it_claimed(dsn: str) -> None:
    async with (
        QueueManager.connect(dsn, name="producer") as producer,
        proxied(dsn) as (proxy, via),
    ):
        await producer.set_policy("amb.chain", max_concurrent=1)
        # The first completion statement frees the slot and takes the
        # second execution for the worker in the same transaction.
        muted = proxy.mute_when_sent(b"fifoq.complete_many_deferred(")
        first, second = await producer.enqueue_many("amb.chain", [1, 2])

        async def second_taken() -> bool:
            found = await live(dsn, "amb.chain")
            return found[1][1] == "active" and found[1][2] is not None

        cutter = asyncio.create_task(cut_once_committed(muted, second_taken))
        async with running_worker(via, concurrency=1, actions=["amb.chain"], keep_slot_under=60):
            await cutter

            async def all_done() -> bool:
                found = [await producer.get(e.id) for e in (first, second)]
                return all(e.status is Status.SUCCEEDED for e in found)

            await wait_until(all_done, DEADLINE, message="the claimed execution ran")


ran_once: list[Any] = []


@app.action("amb.once", max_concurrent=1)
async def once(payload: Any) -> Any:
    ran_once.append(payload)
    return payload


async def test_an_answer_that_comes_after_adoption_ran_its_execution_starts_nothing(
    dsn: str,
) -> None:
    """Adoption may run what an answer still on its way claimed; the answer then starts nothing.

    The handler may have finished by the time the answer comes, so "already
    running" is not enough: what ended here is remembered too (and never
    adopted, like an outcome the worker gave up recording).
    """
    async with (
        QueueManager.connect(dsn, name="producer") as producer,
        running_worker(dsn, concurrency=1, actions=["amb.once"]) as worker,
    ):
        execution = await producer.enqueue("amb.once", {"n": 1})

        async def succeeded() -> bool:
            return (await producer.get(execution.id)).status is Status.SUCCEEDED

        await wait_until(succeeded, DEADLINE, message="it ran and was recorded")
        # The worker's own bookkeeping of its end follows the commit.
        await wait_until(lambda: not worker.running, DEADLINE, message="its handler task ended")
        assert ran_once == [{"n": 1}]
        # The late answer of a statement that had claimed it.
        worker._start_all(producer, [await producer.get(execution.id)])
        assert [e.id for e in worker.running] == []


async def test_a_claim_whose_outcome_is_unknown_counts_as_in_doubt(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OutcomeUnknown (the lost backend would not end) may hide a claim that took work.

    Settling raises it before any look, so the claim's reconcile never runs:
    the manager still counts a claim in doubt, and a worker adopts.
    """
    async with QueueManager.connect(dsn, name="claimer") as qm:
        noticed: list[int] = []
        qm.on_claims_in_doubt(lambda: noticed.append(qm.claims_in_doubt))

        async def unknown(*_: Any, **__: Any) -> Any:
            raise OutcomeUnknown("the lost backend did not end")

        monkeypatch.setattr(qm._db, "rows", unknown)
        with pytest.raises(OutcomeUnknown):
            await qm.claim(["amb.work"], 2)
        with pytest.raises(OutcomeUnknown):
            await qm.complete_and_claim([Outcome(1)], ["amb.work"], 2)
        with pytest.raises(OutcomeUnknown):
            await qm.complete_many([Outcome(2)])  # claims nothing: not in doubt
        assert noticed == [1, 2]
