"""The basic API: what executions, results and statistics look like."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from helpers import executor_row, fetch_rows, wait_until

from fifoq import (
    Execution,
    ExecutionAbandoned,
    ExecutionCancelled,
    FifoqError,
    InvalidInput,
    Outcome,
    QueueManager,
    Status,
    UnknownExecution,
)


async def test_an_execution_carries_its_fields_through_its_life(qm: QueueManager) -> None:
    payload = {"host": "a", "n": [1, 2], "text": "ünï"}
    ex = await qm.enqueue_and_wait("api.fields", payload)
    assert (ex.action, ex.group, ex.seq, ex.status) == ("api.fields", None, 1, Status.ACTIVE)
    assert ex.payload == payload and ex.owner == qm.executor_id
    assert ex.started_at is not None and ex.started_at >= ex.enqueued_at
    assert ex.finished_at is None and ex.result is None and ex.error is None

    done = await qm.complete(ex.id, result={"ok": True, "list": [None, 1.5]})
    assert done.status is Status.SUCCEEDED
    assert done.result == {"ok": True, "list": [None, 1.5]}
    assert done.finished_at is not None and done.finished_at >= ex.started_at
    assert await qm.get(ex.id) == done


async def test_enqueue_returns_the_payload_as_stored_not_the_callers_object(
    qm: QueueManager,
) -> None:
    # JSON has no tuples and no integer keys: what get() reads back differs
    # from what the caller passed, and enqueue's answer must be get()'s.
    payload = {1: ("a", "b"), "nested": {"k": [1, 2]}}
    ex = await qm.enqueue("api.stored", payload)
    waited = await qm.enqueue_and_wait("api.stored", payload)
    many = await qm.enqueue_many("api.stored", [payload, (3, 4)])
    payload["nested"]["k"].append(3)  # a later change of the caller's object changes nothing
    expected = {"1": ["a", "b"], "nested": {"k": [1, 2]}}
    for execution in (ex, waited, many[0]):
        assert execution.payload == expected
        assert execution.payload == (await qm.get(execution.id)).payload
    assert many[1].payload == [3, 4] == (await qm.get(many[1].id)).payload


async def test_an_error_makes_it_failed(qm: QueueManager) -> None:
    ex = await qm.enqueue("api.fail")
    failed = await qm.complete(ex.id, error="boom: it broke")
    assert (failed.status, failed.error, failed.result) == (Status.FAILED, "boom: it broke", None)
    stats = await qm.stats("api.fail")
    assert (stats.total_completed, stats.total_failed) == (1, 1)


async def test_time_out_ends_a_waiting_execution_and_leaves_a_started_one(
    qm: QueueManager,
) -> None:
    # What a waiter without ownership (fifoq enqueue --wait --timeout) does
    # when it gives up: the execution never takes the slot later.
    await qm.set_policy("api.gave_up", max_concurrent=1)
    running = await qm.enqueue("api.gave_up")
    waiting = await qm.enqueue("api.gave_up")
    given_up = await qm.time_out(waiting.id)
    assert given_up.status is Status.TIMED_OUT and given_up.finished_at is not None
    assert await qm.time_out(running.id) == running  # started: unchanged
    assert (await qm.time_out(waiting.id)).status is Status.TIMED_OUT  # again: a no-op
    await qm.complete(running.id)
    stats = await qm.stats("api.gave_up")
    assert (stats.active_count, stats.queue_length, stats.total_timed_out) == (0, 0, 1)
    with pytest.raises(UnknownExecution):
        await qm.time_out(10**12)


async def test_stats_of_a_queue_never_used_are_zero_with_the_policy_limit(
    qm: QueueManager,
) -> None:
    await qm.set_policy("api.*", max_concurrent=4)
    stats = await qm.stats("api.unused", group="g")
    assert (stats.action, stats.group, stats.max_concurrent) == ("api.unused", "g", 4)
    assert (stats.queue_length, stats.active_count, stats.total_enqueued) == (0, 0, 0)
    assert stats.oldest_enqueued_at is None


async def test_snapshot_has_one_row_per_queue_and_only_changes_on_refresh(
    qm: QueueManager,
) -> None:
    await qm.enqueue("api.one")
    await qm.enqueue("api.two", group="x")
    await qm.enqueue("api.two", group="y")
    assert await qm.snapshot_stats() == []  # never refreshed since the template was made
    await qm.refresh_stats()
    snapshot = await qm.snapshot_stats()
    assert [(s.action, s.group) for s in snapshot] == [
        ("api.one", None),
        ("api.two", "x"),
        ("api.two", "y"),
    ]
    await qm.enqueue("api.three")
    assert len(await qm.snapshot_stats()) == 3
    assert len(await qm.live_stats()) == 4


async def test_live_stats_of_one_action_are_its_queues_only(qm: QueueManager) -> None:
    await qm.enqueue("api.mine", group="y")
    await qm.enqueue_many("api.mine", [None, None], group="x")
    await qm.enqueue("api.mine")
    await qm.enqueue("api.mine.not", group="x")

    mine = await qm.live_stats("api.mine")
    assert [(s.action, s.group, s.active_count) for s in mine] == [
        ("api.mine", None, 1),
        ("api.mine", "x", 2),
        ("api.mine", "y", 1),
    ]
    assert [s.group for s in await qm.live_stats("api.mine", group="x")] == ["x"]
    assert [s.group for s in await qm.live_stats("api.mine", group="")] == [None]
    assert await qm.live_stats("api.mine", group="nobody") == []
    assert await qm.live_stats("api.never") == []
    with pytest.raises(InvalidInput, match="group needs an action"):
        await qm.live_stats(group="x")
    with pytest.raises(InvalidInput, match="action"):
        await qm.live_stats("bad\x01action")


async def test_a_waiter_whose_task_is_cancelled_gives_up_its_place(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("api.leave", max_concurrent=1)
    blocker = await qm.enqueue("api.leave")
    waiting = asyncio.create_task(qm.enqueue_and_wait("api.leave"))

    async def queued() -> bool:
        return any(r.status == "queued" for r in await fetch_rows(dsn, "api.leave"))

    await wait_until(queued, message="waiter queued")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)

    async def given_up() -> bool:  # the cancel runs in the background, the caller left
        return [r.status for r in await fetch_rows(dsn, "api.leave")] == ["active", "cancelled"]

    await wait_until(given_up, message="waiter's execution cancelled")
    # Its slot-to-be is not taken by a ghost: the next one starts after the blocker.
    await qm.complete(blocker.id)
    assert (await qm.enqueue("api.leave")).status is Status.ACTIVE


async def _reap(dsn: str, executor_id: int) -> None:
    """What the others do when an executor's lease runs out (fifoq.maintain's reaping)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE fifoq.executors SET ended_at = clock_timestamp(), end_reason = 'lease expired'"
            " WHERE id = %s",
            (executor_id,),
        )
        await conn.execute("SELECT fifoq.abandon_owned(%s)", (executor_id,))


async def test_a_waiter_woken_by_its_executors_reaping_can_call_again_at_once(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("api.reaped", max_concurrent=1)
    await qm.enqueue("api.reaped")  # holds the only slot
    reaped_id = qm.executor_id

    async def wait_then_carry_on() -> Execution:
        with pytest.raises(ExecutionAbandoned):
            await qm.enqueue_and_wait("api.reaped")
        # Its very next call already runs as the new executor.
        return await qm.enqueue_and_wait("api.reaped.next")

    task = asyncio.create_task(wait_then_carry_on())

    async def queued() -> bool:
        return any(r.status == "queued" for r in await fetch_rows(dsn, "api.reaped"))

    await wait_until(queued, message="waiter queued")
    await _reap(dsn, reaped_id)
    carried_on = await task
    assert carried_on.status is Status.ACTIVE
    assert carried_on.owner == qm.executor_id != reaped_id


@pytest.mark.parametrize(
    "call", ["enqueue_and_wait", "wait_started", "claim", "complete_and_claim"]
)
async def test_a_call_that_finds_its_executor_reaped_carries_on_as_a_new_one(
    dsn: str, call: str
) -> None:
    # The process stalled past its lease (SIGSTOP, a blocked event loop) and
    # was reaped; its first call after that names the dead id before the
    # listener's heartbeat (30 s away here) has noticed. That call must not
    # fail with ExecutorGone, an error SPEC does not name: it rejoins as a new
    # executor, as the listener would, and goes on.
    async with QueueManager.connect(dsn, lease=60.0, poll_interval=30.0) as qm:
        await qm.set_policy("api.rejoin", max_concurrent=2)
        reaped_id = qm.executor_id
        bare = await qm.enqueue("api.rejoin")  # active, nobody owns it
        await _reap(dsn, reaped_id)
        if call == "enqueue_and_wait":
            execution = await qm.enqueue_and_wait("api.rejoin")
            assert execution.status is Status.ACTIVE
            assert execution.owner == qm.executor_id != reaped_id
        elif call == "wait_started":
            execution = await qm.wait_started(bare.id)
            assert execution.owner == qm.executor_id != reaped_id
        elif call == "claim":
            (claimed,) = await qm.claim(["api.rejoin"], 5)
            assert claimed.id == bare.id and claimed.owner == qm.executor_id != reaped_id
        else:
            await qm.enqueue("api.rejoin")  # takes the second slot
            await qm.enqueue("api.rejoin")  # waits: the completion admits it
            completed, claimed = await qm.complete_and_claim(
                [Outcome(bare.id, result=1)], ["api.rejoin"], 1
            )
            assert completed[0].status is Status.SUCCEEDED
            assert len(claimed) == 1 and claimed[0].owner == qm.executor_id != reaped_id
        # One new executor, not one per call: the listener, when it looks,
        # finds the id it serves alive.
        assert await executor_row(dsn, qm.executor_id) == (None, None)
        again = await qm.enqueue_and_wait("api.rejoin.again")
        assert again.owner == qm.executor_id


async def test_a_waiter_told_of_its_start_by_the_poll_raises_if_it_was_cancelled_since(
    qm: QueueManager, dsn: str
) -> None:
    # A lost notification: only the heartbeat poll tells the waiter of its
    # start, and the waiter then reads the execution back. Cancelled in
    # between, it must raise ExecutionCancelled, not return the cancelled
    # execution as started.
    assert qm._listener is not None
    qm._listener._dispatch = lambda notify: None  # type: ignore[method-assign]
    await qm.set_policy("api.poll", max_concurrent=1)
    blocker = await qm.enqueue("api.poll")
    waiting = await qm.enqueue("api.poll")
    real_get = qm.get
    cancelled_first: list[bool] = []

    async def get_after_a_cancel(execution_id: int) -> Execution:
        # Lands between the poll and the read: the window, pinned open.
        cancelled_first.append(await qm.cancel(execution_id))
        return await real_get(execution_id)

    qm.get = get_after_a_cancel  # type: ignore[method-assign]
    task = asyncio.create_task(qm.wait_started(waiting.id))

    async def watched() -> bool:
        return (await real_get(waiting.id)).owner == qm.executor_id

    await wait_until(watched, message="waiter owns its execution")
    await qm.complete(blocker.id)  # admits the waiter's execution
    with pytest.raises(ExecutionCancelled):
        await task
    assert cancelled_first == [True]
    assert (await real_get(waiting.id)).status is Status.CANCELLED


async def test_a_client_without_an_executor_works_and_leaves_no_executor_row(dsn: str) -> None:
    async def executors() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            row = await (await conn.execute("SELECT count(*) FROM fifoq.executors")).fetchone()
        assert row is not None
        return int(row[0])

    async with QueueManager.connect(dsn, register_executor=False) as client:
        await client.set_policy("api.client", max_concurrent=1)
        first = await client.enqueue("api.client", {"n": 1})
        second = await client.enqueue("api.client", {"n": 2})
        assert (first.status, second.status) == (Status.ACTIVE, Status.QUEUED)
        await client.complete(first.id, result="done")
        assert (await client.get(second.id)).status is Status.ACTIVE  # the slot moved on
        assert await client.cancel(second.id)
        assert (await client.stats("api.client")).total_cancelled == 1
        # What needs an executor is refused, and says why.
        for call in (
            lambda: client.enqueue_and_wait("api.client"),
            lambda: client.wait_started(first.id),
            lambda: client.claim(None, 1),
        ):
            with pytest.raises(FifoqError, match="register_executor=False"):
                await call()
        assert await executors() == 0
    assert await executors() == 0
