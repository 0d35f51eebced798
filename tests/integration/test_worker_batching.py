"""The worker's group commit of outcomes, and slots kept by quick handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
from helpers import assert_fifo_and_limit, count_of, fetch_rows, wait_until

from fifoq import App, Execution, InvalidTransition, Outcome, QueueManager, Status
from fifoq.worker import Worker
from fifoq.worker.completions import CompletionBatcher


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """Run a worker in this event loop; stop it (and wait for it) on exit."""
    task = asyncio.create_task(worker.run())
    await worker.wait_ready()
    try:
        yield worker
    finally:
        worker.stop()
        await task


def noop_app(action: str, limit: int) -> App:
    """An app with one quick handler."""
    app = App()

    @app.action(action, max_concurrent=limit)
    async def handler(payload: object) -> dict[str, object]:
        await asyncio.sleep(0)
        return {"done": payload}

    return app


def long_app(action: str) -> tuple[App, asyncio.Event]:
    """An app whose handler runs for a minute; the event is set when it is cancelled."""
    cancelled = asyncio.Event()
    app = App()

    @app.action(action, max_concurrent=1)
    async def handler(payload: object) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return app, cancelled


async def succeeded(qm: QueueManager, action: str) -> int:
    """How many executions of the action succeeded so far."""
    return (await qm.stats(action)).total_completed


async def test_outcomes_that_arrive_together_share_one_statement(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("wb.group", max_concurrent=20)
    started = await qm.enqueue_many("wb.group", list(range(12)))
    claimed = await qm.claim(["wb.group"], 12)
    assert len(claimed) == 12
    batcher = CompletionBatcher(qm, max_batch=100)
    results = await asyncio.gather(
        *(batcher.complete(Outcome(e.id, result={"i": e.payload})) for e in claimed)
    )
    # Handed in before the sender ran: all twelve in one statement.
    assert batcher.statements == 1
    assert [r.id for r in results] == [e.id for e in claimed]
    assert all(r.status is Status.SUCCEEDED for r in results)
    assert {r.id for r in results} == {e.id for e in started}


async def test_a_refused_batch_gives_each_caller_its_own_answer(qm: QueueManager) -> None:
    await qm.set_policy("wb.refused", max_concurrent=5)
    executions = await qm.enqueue_many("wb.refused", [1, 2, 3, 4])
    assert all(e.status is Status.ACTIVE for e in executions)
    await qm.cancel(executions[2].id)  # no longer active: its completion must fail alone
    batcher = CompletionBatcher(qm, max_batch=100)
    outcomes = await asyncio.gather(
        *(batcher.complete(Outcome(e.id)) for e in executions), return_exceptions=True
    )
    assert isinstance(outcomes[2], InvalidTransition)
    for i in (0, 1, 3):
        answer = outcomes[i]
        assert isinstance(answer, Execution) and answer.status is Status.SUCCEEDED
    assert (await qm.get(executions[2].id)).status is Status.CANCELLED


async def test_a_quick_worker_takes_the_next_execution_with_its_completion(dsn: str) -> None:
    action, limit = "wb.keep", 2
    worker = Worker(noop_app(action, limit), dsn, concurrency=limit, keep_slot_under=60.0)
    async with running(worker), QueueManager.connect(dsn) as qm:
        await qm.enqueue_many(action, list(range(40)))
        await wait_until(lambda: succeeded(qm, action), message="first completions")
        await wait_until(lambda: _all_done(qm, action, 40), timeout=30, message="all 40 succeeded")
    assert worker._completions is not None
    # Every execution after the first two admitted came with a completion
    # (none left for the claim loop), except where a batch was refused.
    assert worker._completions.claimed >= 30
    assert worker.completed == 40
    rows = await fetch_rows(dsn, action)
    assert_fifo_and_limit(rows, limit)
    assert {r.owner for r in rows} == {worker.executor_id}


async def test_with_keep_slot_under_zero_every_slot_is_offered_to_all(dsn: str) -> None:
    action, limit = "wb.offer", 2
    worker = Worker(noop_app(action, limit), dsn, concurrency=limit, keep_slot_under=0)
    async with running(worker), QueueManager.connect(dsn) as qm:
        await qm.enqueue_many(action, list(range(20)))
        await wait_until(lambda: _all_done(qm, action, 20), timeout=30, message="all 20 succeeded")
    assert worker._completions is not None
    assert worker._completions.claimed == 0
    assert worker.completed == 20
    assert_fifo_and_limit(await fetch_rows(dsn, action), limit)


async def test_a_kept_slot_never_takes_an_execution_someone_waits_on(dsn: str) -> None:
    # The execution the freed slot admits is owned (a waiter's): it stays the
    # waiter's, and the waiter is told it started.
    action = "wb.owned"
    release = asyncio.Event()
    app = App()

    @app.action(action, max_concurrent=1)
    async def handler(payload: object) -> None:
        await release.wait()

    worker = Worker(app, dsn, concurrency=1, keep_slot_under=60.0)
    async with running(worker), QueueManager.connect(dsn) as producer:
        first = await producer.enqueue(action, "first")
        await wait_until(lambda: worker.running, message="the worker running the first")
        async with QueueManager.connect(dsn) as waiter:
            waiting = asyncio.create_task(waiter.enqueue_and_wait(action, "mine", timeout=30))
            await wait_until(
                lambda: _queued(producer, action), message="the waiter's execution queued"
            )
            release.set()
            mine = await waiting
            assert mine.status is Status.ACTIVE
            assert mine.owner == waiter.executor_id
            await waiter.complete(mine.id)
        done = await producer.get(first.id)
    assert done.status is Status.SUCCEEDED
    assert done.owner == worker.executor_id
    assert worker.completed == 1


async def _queued(qm: QueueManager, action: str) -> bool:
    return (await qm.stats(action)).queue_length == 1


async def test_wait_ready_raises_what_kept_the_worker_from_starting() -> None:
    worker = Worker(noop_app("wb.never", 1), "postgresql://nobody@127.0.0.1:1/none")
    task = asyncio.create_task(worker.run())
    with pytest.raises(psycopg.OperationalError):
        await asyncio.wait_for(worker.wait_ready(), timeout=30)
    with pytest.raises(psycopg.OperationalError):
        await task


async def _all_done(qm: QueueManager, action: str, n: int) -> bool:
    return await succeeded(qm, action) >= n


@pytest.mark.parametrize("keep", [0.0, 60.0])
async def test_stopping_worker_takes_no_more_work_with_its_completions(
    dsn: str, keep: float
) -> None:
    action = f"wb.stop{int(keep)}"
    release = asyncio.Event()
    app = App()

    @app.action(action, max_concurrent=1)
    async def handler(payload: object) -> None:
        await release.wait()

    worker = Worker(app, dsn, concurrency=1, keep_slot_under=keep, grace=30)
    async with QueueManager.connect(dsn) as qm:
        task = asyncio.create_task(worker.run())
        await worker.wait_ready()
        executions = await qm.enqueue_many(action, [1, 2, 3])
        await wait_until(lambda: worker.running, message="the first handler running")
        worker.stop()
        release.set()
        await task
        after = [await qm.get(e.id) for e in executions]
    # The first finished; the one its slot admitted was not taken by the
    # stopping worker: it is active and nobody's (another worker may claim it).
    assert after[0].status is Status.SUCCEEDED
    assert after[1].status is Status.ACTIVE and after[1].owner is None
    assert after[2].status is Status.QUEUED


async def test_complete_and_claim_takes_older_unclaimed_first_then_what_it_admits(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("wb.cc", max_concurrent=3)
    first = await qm.enqueue_many("wb.cc", list(range(6)))  # 3 active (unowned), 3 queued
    mine = await qm.claim(["wb.cc"], 1)  # one taken; two admitted stay unclaimed
    assert [e.id for e in mine] == [first[0].id]
    completed, claimed = await qm.complete_and_claim([Outcome(mine[0].id)], ["wb.cc"], 3)
    assert [e.status for e in completed] == [Status.SUCCEEDED]
    # Older admitted ones first (seq 2, 3), then the one the freed slot admitted (seq 4).
    assert [e.id for e in claimed] == [first[1].id, first[2].id, first[3].id]
    assert all(e.status is Status.ACTIVE and e.owner == qm.executor_id for e in claimed)
    assert [e.status for e in [await qm.get(e.id) for e in first[4:]]] == [Status.QUEUED] * 2


async def test_complete_and_claim_leaves_other_actions_and_a_zero_limit_alone(
    qm: QueueManager,
) -> None:
    await qm.set_policy("wb.other", max_concurrent=1)
    running, waiting = await qm.enqueue_many("wb.other", ["a", "b"])
    [taken] = await qm.claim(["wb.other"], 1)
    completed, claimed = await qm.complete_and_claim([Outcome(taken.id)], ["wb.elsewhere"], 5)
    assert claimed == [] and completed[0].status is Status.SUCCEEDED
    after = await qm.get(waiting.id)
    assert after.status is Status.ACTIVE and after.owner is None  # admitted, left for any worker
    _, none = await qm.complete_and_claim([Outcome((await qm.claim(None, 1))[0].id)], None, 0)
    assert none == []
    assert running.id == taken.id


async def test_claim_of_no_actions_takes_nothing_and_none_takes_any(qm: QueueManager) -> None:
    await qm.set_policy("wb.none", max_concurrent=1)
    first, second = await qm.enqueue_many("wb.none", ["a", "b"])  # active (nobody's), queued
    # An empty list names no action: it is not "any action" (that is None).
    assert await qm.claim([], 5) == []
    [taken] = await qm.claim(["wb.none"], 5)
    assert taken.id == first.id
    completed, claimed = await qm.complete_and_claim([Outcome(taken.id)], [], 5)
    assert claimed == [] and completed[0].status is Status.SUCCEEDED
    admitted = await qm.get(second.id)
    assert admitted.status is Status.ACTIVE and admitted.owner is None
    assert [e.id for e in await qm.claim(None, 5)] == [second.id]


async def test_work_a_completion_brings_after_stop_is_listed_as_handed_back(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A completion statement sent just before stop() comes back with the
    # executions its freed slots admitted (keep_slot_under). Held here on the
    # queue lock until the stopping worker has moved on: what it brings must
    # not start after the grace period (0), and must be in the handed-back
    # list, the operator's only record of what was abandoned.
    caplog.set_level(logging.DEBUG, logger="fifoq.worker")
    action = "wb.late"
    go = asyncio.Event()
    app = App()

    later = asyncio.Event()  # set only at the end

    @app.action(action, max_concurrent=2)
    async def handler(payload: object) -> None:
        await go.wait()
        if payload in (3, 4):  # the work the late statement brings: long
            await later.wait()

    worker = Worker(app, dsn, concurrency=2, keep_slot_under=60.0, grace=0)
    async with (
        QueueManager.connect(dsn) as qm,
        await psycopg.AsyncConnection.connect(dsn) as holder,
    ):
        task = asyncio.create_task(worker.run())
        await worker.wait_ready()
        first = await qm.enqueue_many(action, [1, 2])
        behind = await qm.enqueue_many(action, [3, 4])
        await wait_until(lambda: len(worker.running) == 2, message="two handlers running")
        await holder.execute(
            "SELECT fifoq.lock_queue(queue_id) FROM fifoq.executions WHERE id = %s",
            (first[0].id,),
        )
        go.set()  # both finish; their completion waits for the queue lock

        async def completion_waits() -> bool:
            return (
                await count_of(
                    dsn,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = 1718183537 AND NOT granted",
                )
                > 0
            )

        await wait_until(completion_waits, message="completion statement waiting for the lock")
        worker.stop()

        def stopping_moved_on() -> bool:  # past the grace period, or waiting for the statement
            return any(
                "waiting up to" in r.message or "completion statements in flight" in r.message
                for r in caplog.records
            )

        await wait_until(stopping_moved_on, message="worker stopping")
        await holder.commit()  # the statement goes on, and takes the next two
        await asyncio.wait_for(task, 30)
        later.set()  # whatever still runs may end now
        statuses = {e.id: (await qm.get(e.id)).status for e in first + behind}
    assert [statuses[e.id] for e in first] == [Status.SUCCEEDED] * 2, statuses
    assert [statuses[e.id] for e in behind] == [Status.ABANDONED] * 2, statuses
    assert sorted(worker.handed_back) == [e.id for e in behind]


async def test_a_worker_hears_of_new_work_without_waiting_for_its_claim_interval(
    dsn: str,
) -> None:
    # Admissions of executions nobody owns are announced (NOTIFY fifoq_work);
    # the periodic claim (30 s here) is only the fallback for a lost one.
    action = "wb.notified"
    started = asyncio.Event()
    app = App()

    @app.action(action, max_concurrent=1)
    async def handler(payload: object) -> None:
        started.set()

    worker = Worker(app, dsn, concurrency=1, claim_interval=30.0)
    async with running(worker), QueueManager.connect(dsn) as qm:
        # At once: a worker that says it is ready already listens for work.
        await qm.enqueue(action)
        await asyncio.wait_for(started.wait(), 10)


async def test_a_running_handler_whose_execution_is_abandoned_is_cancelled(dsn: str) -> None:
    # The database abandoned the execution (its executor was reaped while
    # the process was stalled, or an operator ran fifoq.abandon_owned): the
    # handler must stop, and no outcome is recorded over the abandonment.
    action = "wb.abandoned"
    app, cancelled = long_app(action)
    worker = Worker(app, dsn, concurrency=1)
    async with running(worker), QueueManager.connect(dsn) as qm:
        execution = await qm.enqueue(action)
        await wait_until(lambda: worker.running, message="handler running")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("SELECT fifoq.abandon_owned(%s)", (worker.executor_id,))
        await asyncio.wait_for(cancelled.wait(), 10)
        await wait_until(lambda: not worker.running, message="handler gone")
        assert (await qm.get(execution.id)).status is Status.ABANDONED


async def test_handlers_still_running_when_the_grace_period_ends_are_cancelled_then(
    dsn: str,
) -> None:
    # Not seconds later: the grace period is what the operator gave them.
    # (The settling time after it is for the cancelled ones to unwind.)
    action = "wb.grace"
    app, cancelled = long_app(action)
    worker = Worker(app, dsn, concurrency=1, grace=0.3)
    async with QueueManager.connect(dsn) as qm:
        task = asyncio.create_task(worker.run())
        await worker.wait_ready()
        execution = await qm.enqueue(action)
        await wait_until(lambda: worker.running, message="handler running")
        worker.stop()
        await asyncio.wait_for(cancelled.wait(), 0.3 + 2.0)
        await task
        assert worker.handed_back == [execution.id]
        assert (await qm.get(execution.id)).status is Status.ABANDONED


async def test_a_queue_held_by_a_client_does_not_hold_up_other_queues_outcomes(
    qm: QueueManager, dsn: str
) -> None:
    # A client that enqueued into wb.x and has not committed holds wb.x's
    # lock, so the statement recording wb.x's outcome waits for it. The
    # outcome of wb.y, finished after, must not wait with it (SPEC §3.6): it
    # goes in a statement of its own, and wb.y's next execution starts.
    gates = {"wb.x": asyncio.Event(), "wb.y": asyncio.Event()}
    app = App()
    for action, gate in gates.items():

        @app.action(action, max_concurrent=1)
        async def handler(payload: object, gate: asyncio.Event = gate) -> object:
            if payload == "held":
                await gate.wait()
            return payload

    worker = Worker(app, dsn, concurrency=4)
    async with running(worker), await psycopg.AsyncConnection.connect(dsn) as client:
        x = await qm.enqueue("wb.x", "held")
        y = await qm.enqueue("wb.y", "held")
        y_next = await qm.enqueue("wb.y", "next")
        await wait_until(lambda: len(worker.running) == 2, 10, message="both handlers running")
        await client.execute("SELECT fifoq.enqueue('wb.x')")  # holds wb.x until it ends
        gates["wb.x"].set()
        completions = worker._completions
        assert completions is not None
        await wait_until(lambda: completions.busy, 10, message="wb.x's outcome in flight")
        gates["wb.y"].set()

        async def finished(execution: Execution) -> bool:
            return (await qm.get(execution.id)).status is Status.SUCCEEDED

        await wait_until(lambda: finished(y), 10, message="wb.y's outcome recorded")
        await wait_until(lambda: finished(y_next), 10, message="wb.y's next one run")
        assert (await qm.get(x.id)).status is Status.ACTIVE  # wb.x's still waits
        await client.rollback()
        await wait_until(lambda: finished(x), 10, message="wb.x's outcome once released")
