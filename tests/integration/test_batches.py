"""enqueue_many and complete_many: many executions per statement, under the rules of one.

A batch is one transaction: all of it or nothing. Its executions take
contiguous seq numbers per queue in input order, and it starts at once
exactly what single enqueues (or completions) in the same order would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from helpers import assert_fifo_and_limit, counts, fetch_rows, wait_until

from fifoq import (
    Execution,
    FifoqError,
    InvalidInput,
    InvalidTransition,
    Outcome,
    PolicyRejected,
    QueueFull,
    QueueManager,
    Status,
    UnknownExecution,
)

A, Q = Status.ACTIVE, Status.QUEUED
UNKNOWN_ID = 2**40
MAX_BATCH = 10_000


class NotJson:
    """An object json cannot serialise."""


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


async def assert_refused(
    dsn: str, call: Callable[[], Awaitable[Any]], error: type[FifoqError], *names: str
) -> str:
    """``call`` raises ``error`` with a one-line message naming ``names`` and changes nothing."""
    before = await counts(dsn)
    with pytest.raises(error) as info:
        await call()
    message = str(info.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert await counts(dsn) == before, "the database changed"
    return message


async def statuses(qm: QueueManager, executions: list[Execution]) -> list[Status]:
    """The status of each execution as stored now."""
    return [(await qm.get(e.id)).status for e in executions]


async def xmins(dsn: str, ids: list[int]) -> list[int]:
    """The transaction that last wrote each execution row (equal: written together)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT e.xmin::text::bigint FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(id, ord)"
            " JOIN fifoq.executions e ON e.id = u.id ORDER BY u.ord",
            (ids,),
        )
        return [row[0] for row in await cur.fetchall()]


async def queue_ids(dsn: str, action: str) -> dict[str | None, int]:
    """The id of each queue of an action, by group."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT group_key, id FROM fifoq.queues WHERE action = %s", (action,)
        )
        return {group or None: queue_id for group, queue_id in await cur.fetchall()}


@pytest.fixture
async def small(dsn: str) -> AsyncIterator[QueueManager]:
    """An executor with a 64-byte payload limit."""
    async with QueueManager.connect(dsn, max_payload_bytes=64) as manager:
        yield manager


# -- enqueue_many: order, seq and admission ------------------------------------------


async def test_a_batch_comes_back_in_input_order_with_contiguous_seq(
    qm: QueueManager, dsn: str
) -> None:
    before = [await qm.enqueue("many.order", {"single": i}) for i in range(2)]
    payloads = [{"n": i, "text": f"ünï {i}"} for i in range(5)] + [None, [1, "x"], "plain", 7]
    batch = await qm.enqueue_many("many.order", payloads)
    assert [e.payload for e in batch] == payloads
    assert [e.seq for e in batch] == list(range(3, 3 + len(payloads)))
    assert {(e.action, e.group, e.status) for e in batch} == {("many.order", None, A)}
    ids = [e.id for e in batch]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > before[-1].id
    for a, b in itertools.pairwise(batch):
        assert a.enqueued_at <= b.enqueued_at
        assert a.started_at is not None and b.started_at is not None
        assert a.started_at <= b.started_at
    # Stored as returned, payloads included.
    for execution in batch:
        stored = await qm.get(execution.id)
        assert stored == execution
    # The next single enqueue follows the batch without a hole.
    after = await qm.enqueue("many.order")
    assert after.seq == batch[-1].seq + 1
    rows = await fetch_rows(dsn, "many.order")
    assert [r.seq for r in rows] == list(range(1, len(payloads) + 4))


async def test_a_batch_into_an_empty_queue_starts_what_its_free_slots_hold(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.admit", max_concurrent=3)
    batch = await qm.enqueue_many("many.admit", [{"n": i} for i in range(5)])
    assert [e.status for e in batch] == [A, A, A, Q, Q]
    assert [e.started_at is not None for e in batch] == [True] * 3 + [False] * 2
    stats = await qm.stats("many.admit")
    assert (stats.active_count, stats.queue_length, stats.total_enqueued) == (3, 2, 5)
    # The freed slot goes to the head, and a batch behind a full line waits.
    await qm.complete(batch[0].id)
    assert (await qm.get(batch[3].id)).status is A
    more = await qm.enqueue_many("many.admit", [{"n": 5}, {"n": 6}])
    assert [e.status for e in more] == [Q, Q]
    assert_fifo_and_limit(await fetch_rows(dsn, "many.admit"), 3)


async def test_a_batch_starts_exactly_what_single_enqueues_would(
    qm: QueueManager, dsn: str
) -> None:
    """The same steps, once with batches and once one by one, leave the same queues."""
    await qm.set_policy("twin.*", max_concurrent=3)
    steps = [1, 4, 2, 3]  # batch sizes; the oldest active one completes after each
    for action, batched in (("twin.batch", True), ("twin.single", False)):
        for step, size in enumerate(steps):
            payloads = [{"step": step, "i": i} for i in range(size)]
            if batched:
                await qm.enqueue_many(action, payloads)
            else:
                for payload in payloads:
                    await qm.enqueue(action, payload)
            rows = await fetch_rows(dsn, action)
            await qm.complete(next(r.id for r in rows if r.status == "active"))

    async def queue(action: str) -> list[tuple[int, str, Any]]:
        rows = await fetch_rows(dsn, action)
        return [(r.seq, r.status, (await qm.get(r.id)).payload) for r in rows]

    batched_queue = await queue("twin.batch")
    assert batched_queue == await queue("twin.single")
    # 1: A, done. 4: A A A Q, one done, the Q admitted. 2: Q Q, one done, one
    # admitted. 3: Q Q Q, one done, one admitted.
    assert [status for _, status, _ in batched_queue] == ["succeeded"] * 4 + ["active"] * 3 + [
        "queued"
    ] * 3


async def test_a_batch_into_a_busy_queue_starts_only_what_fits(qm: QueueManager) -> None:
    await qm.set_policy("many.busy", max_concurrent=3)
    first = await qm.enqueue("many.busy")
    batch = await qm.enqueue_many("many.busy", [{"n": i} for i in range(4)])
    assert [(e.seq, e.status) for e in batch] == [(2, A), (3, A), (4, Q), (5, Q)]
    assert first.status is A


async def test_a_batch_never_jumps_waiters_even_when_a_slot_is_free(
    qm: QueueManager, dsn: str
) -> None:
    """An outside row lock keeps the head waiting beside a free slot; the batch waits too."""
    await qm.set_policy("many.jump", max_concurrent=2)
    running, other, head = await qm.enqueue_many("many.jump", [{"n": 0}, {"n": 1}, {"n": 2}])
    assert (running.status, other.status, head.status) == (A, A, Q)
    async with await psycopg.AsyncConnection.connect(dsn) as outsider:
        await outsider.execute(
            "SELECT 1 FROM fifoq.executions WHERE id = %s FOR UPDATE", (head.id,)
        )
        await qm.complete(running.id)
        stats = await qm.stats("many.jump")
        assert (stats.active_count, stats.queue_length) == (1, 1)  # a free slot, one waiting

        batch = await qm.enqueue_many("many.jump", [{"n": 3}, {"n": 4}])
        assert [(e.seq, e.status) for e in batch] == [(4, Q), (5, Q)]
        assert (await qm.stats("many.jump")).active_count == 1
        await outsider.rollback()
    # The maintenance pass admits the head, and only the head.
    await wait_until(
        lambda: _status_is(qm, head.id, A), timeout=3, message="head admitted after the lock"
    )
    assert await statuses(qm, batch) == [Q, Q]
    await qm.complete(other.id)
    assert await statuses(qm, batch) == [A, Q]
    assert_fifo_and_limit(await fetch_rows(dsn, "many.jump"), 2)


async def _status_is(qm: QueueManager, execution_id: int, status: Status) -> bool:
    return (await qm.get(execution_id)).status is status


async def test_group_by_spreads_a_batch_over_queues_each_in_input_order(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.hosts", max_concurrent=1, group_by=("host",))
    earlier = await qm.enqueue("many.hosts", {"host": "a", "n": -1})
    payloads = [
        {"host": "b", "n": 0},
        {"host": "a", "n": 1},
        {"host": "b", "n": 2},
        {"host": "c", "n": 3},
        {"host": "a", "n": 4},
        {"host": "b", "n": 5},
        {"n": 6},  # no host: the default group
    ]
    batch = await qm.enqueue_many("many.hosts", payloads)
    assert [e.payload for e in batch] == payloads
    assert [(e.group, e.seq, e.status) for e in batch] == [
        ("b", 1, A),
        ("a", 2, Q),  # group a already has its one active execution
        ("b", 2, Q),
        ("c", 1, A),
        ("a", 3, Q),
        ("b", 3, Q),
        (None, 1, A),
    ]
    # Within each queue, ids (insert order) follow input order as well.
    for group in ("a", "b"):
        ids = [e.id for e in batch if e.group == group]
        assert ids == sorted(ids)
    for group, active, waiting in (("a", 1, 2), ("b", 1, 2), ("c", 1, 0), (None, 1, 0)):
        stats = await qm.stats("many.hosts", group=group)
        assert (stats.active_count, stats.queue_length) == (active, waiting), group
    # Completions in one group start that group's next, in its input order.
    await qm.complete(earlier.id)
    assert await statuses(qm, batch[1:5:3]) == [A, Q]
    assert_fifo_and_limit(await fetch_rows(dsn, "many.hosts"), 1)


async def test_an_explicit_group_takes_the_whole_batch(qm: QueueManager) -> None:
    await qm.set_policy("many.explicit", max_concurrent=1, group_by=("host",))
    batch = await qm.enqueue_many(
        "many.explicit", [{"host": "a"}, {"host": "b"}, {"host": "c"}], group="manual"
    )
    assert [(e.group, e.seq, e.status) for e in batch] == [
        ("manual", 1, A),
        ("manual", 2, Q),
        ("manual", 3, Q),
    ]


async def test_executions_a_batch_left_waiting_time_out_like_single_ones(
    qm: QueueManager,
) -> None:
    await qm.set_policy("many.timeout", max_concurrent=1, queue_timeout=0.3)
    batch = await qm.enqueue_many("many.timeout", [{"n": i} for i in range(3)])
    assert [e.status for e in batch] == [A, Q, Q]

    async def both_timed_out() -> bool:
        return await statuses(qm, batch[1:]) == [Status.TIMED_OUT] * 2

    await wait_until(both_timed_out, timeout=5, message="the waiting part timed out")
    assert (await qm.get(batch[0].id)).status is A  # the admitted one has no deadline
    stats = await qm.stats("many.timeout")
    assert (stats.queue_length, stats.total_timed_out, stats.active_count) == (0, 2, 1)


# -- enqueue_many: refused batches store nothing --------------------------------------


async def test_a_batch_whose_waiting_part_does_not_fit_is_queue_full_and_stores_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.full", max_concurrent=1, max_queue_length=3)
    await qm.enqueue("many.full")
    await qm.enqueue("many.full")  # one waiting: room for two more
    message = await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.full", [{"n": i} for i in range(3)]),
        QueueFull,
        "queue full for action 'many.full'",
        "1 of 3 waiting",
    )
    assert message.startswith("queue full for action 'many.full': ")
    stats = await qm.stats("many.full")
    assert (stats.total_enqueued, stats.queue_length, stats.active_count) == (2, 1, 1)
    # Exactly what fits is accepted; the seq numbers carry on without a hole.
    fits = await qm.enqueue_many("many.full", [{"n": 0}, {"n": 1}])
    assert [(e.seq, e.status) for e in fits] == [(3, Q), (4, Q)]
    with pytest.raises(QueueFull):
        await qm.enqueue("many.full")


async def test_only_the_waiting_part_of_a_batch_counts_against_the_queue_length(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("len.*", max_concurrent=3, max_queue_length=2)
    fits = await qm.enqueue_many("len.fits", [None] * 5)
    assert [e.status for e in fits] == [A, A, A, Q, Q]
    # Six into a fresh queue: three would wait. Not even the queue is created.
    await assert_refused(
        dsn, lambda: qm.enqueue_many("len.over", [None] * 6), QueueFull, "'len.over'"
    )
    assert "len.over" not in {s.action for s in await qm.live_stats()}


async def test_a_full_second_queue_undoes_the_share_of_the_first(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.fullgrp", max_concurrent=1, max_queue_length=1, group_by=("host",))
    await qm.enqueue("many.fullgrp", {"host": "a"})
    await qm.enqueue("many.fullgrp", {"host": "b"})
    await qm.enqueue("many.fullgrp", {"host": "b"})  # queue b is full; a has room for one
    ids = await queue_ids(dsn, "many.fullgrp")
    assert ids["a"] < ids["b"]  # a is locked and filled first, then b refuses
    message = await assert_refused(
        dsn,
        lambda: qm.enqueue_many(
            "many.fullgrp", [{"host": "c"}, {"host": "a"}, {"host": "b"}, {"host": "d"}]
        ),
        QueueFull,
        "group 'b'",
    )
    assert "'many.fullgrp'" in message
    assert set(await queue_ids(dsn, "many.fullgrp")) == {"a", "b"}  # no queue c or d
    stats_a = await qm.stats("many.fullgrp", group="a")
    assert (stats_a.total_enqueued, stats_a.queue_length) == (1, 0)


async def test_reject_refuses_a_batch_that_cannot_start_entirely_and_stores_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.reject", max_concurrent=3, on_limit="reject")
    message = await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.reject", [{"n": i} for i in range(4)]),
        PolicyRejected,
        "'many.reject'",
        "on_limit=reject",
    )
    assert "at its limit" in message
    assert "many.reject" not in {s.action for s in await qm.live_stats()}
    started = await qm.enqueue_many("many.reject", [{"n": i} for i in range(3)])
    assert [(e.seq, e.status) for e in started] == [(1, A), (2, A), (3, A)]
    await assert_refused(dsn, lambda: qm.enqueue_many("many.reject", [None]), PolicyRejected)
    stats = await qm.stats("many.reject")
    assert (stats.total_enqueued, stats.active_count, stats.queue_length) == (3, 3, 0)
    await qm.complete(started[1].id)
    assert [e.status for e in await qm.enqueue_many("many.reject", [None])] == [A]


# -- enqueue_many: in the caller's transaction -------------------------------------


async def test_a_batch_in_a_committed_transaction_appears_at_commit(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.tx", max_concurrent=2)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            batch = await qm.enqueue_many("many.tx", [{"n": i} for i in range(3)], conn=conn)
            assert [(e.seq, e.status) for e in batch] == [(1, A), (2, A), (3, Q)]
            with pytest.raises(UnknownExecution):  # not visible before the commit
                await qm.get(batch[0].id)
        assert [await qm.get(e.id) for e in batch] == batch
    stats = await qm.stats("many.tx")
    assert (stats.total_enqueued, stats.active_count, stats.queue_length) == (3, 2, 1)


async def test_a_batch_in_a_rolled_back_transaction_leaves_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("many.roll", max_concurrent=1)
    blocker = await qm.enqueue("many.roll")
    before = await counts(dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(Boom):
            async with conn.transaction():
                queued = await qm.enqueue_many("many.roll", [{"n": 1}, {"n": 2}], conn=conn)
                fresh = await qm.enqueue_many("many.roll-new", [None, None], conn=conn)
                assert [e.status for e in queued + fresh] == [Q, Q, A, A]
                raise Boom
    assert await counts(dsn) == before  # no execution, no queue, no counter moved
    for execution in queued + fresh:
        with pytest.raises(UnknownExecution):
            await qm.get(execution.id)
    after = await qm.enqueue_many("many.roll", [None])
    assert after[0].seq == blocker.seq + 1


# -- complete_many ---------------------------------------------------------------------


async def test_complete_many_finishes_each_and_admits_the_heads_in_fifo_order(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("done.fifo", max_concurrent=2)
    e = await qm.enqueue_many("done.fifo", [{"n": i} for i in range(6)])
    assert [x.status for x in e] == [A, A, Q, Q, Q, Q]

    done = await qm.complete_many(
        [Outcome(e[1].id, error="boom: it broke"), Outcome(e[0].id, result={"ok": 0})]
    )
    assert [(d.id, d.status, d.result, d.error) for d in done] == [
        (e[1].id, Status.FAILED, None, "boom: it broke"),
        (e[0].id, Status.SUCCEEDED, {"ok": 0}, None),
    ]
    assert [d.payload for d in done] == [{"n": 1}, {"n": 0}]
    assert all(d.finished_at is not None for d in done)
    for d in done:
        assert await qm.get(d.id) == d
    # The two freed slots went to the head of the line, in seq order, in the
    # same transaction as the completions.
    assert await statuses(qm, e[2:]) == [A, A, Q, Q]
    started = [await qm.get(x.id) for x in e[2:4]]
    assert started[0].started_at is not None and started[1].started_at is not None
    assert started[0].started_at <= started[1].started_at
    assert started[0].started_at >= max(d.finished_at for d in done if d.finished_at)
    assert len(set(await xmins(dsn, [e[0].id, e[1].id, e[2].id, e[3].id]))) == 1
    stats = await qm.stats("done.fifo")
    assert (stats.active_count, stats.queue_length) == (2, 2)
    assert (stats.total_completed, stats.total_failed) == (2, 1)

    await qm.complete_many([Outcome(e[3].id, result=[1, 2]), Outcome(e[2].id)])
    assert await statuses(qm, e[4:]) == [A, A]
    assert (await qm.get(e[3].id)).result == [1, 2]
    await qm.complete_many([Outcome(e[5].id), Outcome(e[4].id)])
    rows = await fetch_rows(dsn, "done.fifo")
    assert [r.status for r in rows] == ["succeeded", "failed"] + ["succeeded"] * 4
    assert_fifo_and_limit(rows, 2)


async def test_complete_many_across_queues_admits_each_queues_head(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("span.*", max_concurrent=1)
    a_run, a_wait = await qm.enqueue_many("span.a", [{"q": "a", "n": 0}, {"q": "a", "n": 1}])
    b_run, b_wait = await qm.enqueue_many("span.b", [{"q": "b", "n": 0}, {"q": "b", "n": 1}])
    done = await qm.complete_many([Outcome(b_run.id, result="b"), Outcome(a_run.id, error="a")])
    assert [(d.action, d.status) for d in done] == [
        ("span.b", Status.SUCCEEDED),
        ("span.a", Status.FAILED),
    ]
    assert await statuses(qm, [a_wait, b_wait]) == [A, A]
    assert len(set(await xmins(dsn, [a_run.id, b_run.id, a_wait.id, b_wait.id]))) == 1
    for action in ("span.a", "span.b"):
        stats = await qm.stats(action)
        assert (stats.active_count, stats.queue_length, stats.total_completed) == (1, 0, 1)


async def test_complete_many_wakes_a_waiter_whose_execution_it_admits(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("done.wake", max_concurrent=2)
    first, second, waiting = await qm.enqueue_many("done.wake", [None, None, {"w": 1}])
    assert waiting.status is Q
    # A poll far slower than the wait below: the admission's notification,
    # sent after complete_many's flush, is what wakes the waiter.
    async with QueueManager.connect(dsn, name="waiter", lease=60, poll_interval=30) as other:
        waiter = asyncio.create_task(other.wait_started(waiting.id))

        async def owned() -> bool:
            return (await qm.get(waiting.id)).owner == other.executor_id

        await wait_until(owned, message="the waiter took ownership")
        assert not waiter.done()
        await qm.complete_many([Outcome(first.id, result={"freed": True})])
        started = await asyncio.wait_for(waiter, timeout=1.5)
        stored = await qm.get(waiting.id)
        assert (started.id, started.status, started.owner) == (waiting.id, A, other.executor_id)
        assert started.started_at == stored.started_at
        await other.complete(started.id)
    assert (await qm.get(second.id)).status is A


async def test_completing_a_non_active_execution_in_a_batch_changes_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("done.bad", max_concurrent=2)
    e = await qm.enqueue_many("done.bad", [{"n": i} for i in range(4)])
    await qm.complete(e[0].id, result={"first": True})
    # e[0] succeeded, e[1] and e[2] active, e[3] waiting.
    message = await assert_refused(
        dsn,
        lambda: qm.complete_many([Outcome(e[1].id), Outcome(e[0].id, result={"again": 1})]),
        InvalidTransition,
        str(e[0].id),
        "succeeded",
    )
    assert message == (
        f"cannot complete execution {e[0].id} of action 'done.bad': it is succeeded, not active"
    )
    await assert_refused(
        dsn,
        lambda: qm.complete_many([Outcome(e[2].id), Outcome(e[3].id), Outcome(e[1].id)]),
        InvalidTransition,
        str(e[3].id),
        "queued",
    )
    await qm.cancel(e[3].id)
    await assert_refused(
        dsn,
        lambda: qm.complete_many([Outcome(e[3].id), Outcome(e[2].id)]),
        InvalidTransition,
        "cancelled",
    )
    assert await statuses(qm, e) == [Status.SUCCEEDED, A, A, Status.CANCELLED]
    assert (await qm.get(e[0].id)).result == {"first": True}


@pytest.mark.parametrize("bad_first", [False, True], ids=["bad-id-last", "bad-id-first"])
async def test_a_non_active_execution_in_the_second_queue_undoes_the_first_queue(
    qm: QueueManager, dsn: str, bad_first: bool
) -> None:
    await qm.set_policy("two.*", max_concurrent=2)
    x = await qm.enqueue_many("two.x", [{"n": i} for i in range(3)])  # A A Q
    y = await qm.enqueue_many("two.y", [{"n": i} for i in range(3)])  # A A Q
    x_queue = (await queue_ids(dsn, "two.x"))[None]
    y_queue = (await queue_ids(dsn, "two.y"))[None]
    assert x_queue < y_queue  # x is locked and completed first, then y refuses
    good = [Outcome(x[0].id, result=1), Outcome(x[1].id, error="e"), Outcome(y[0].id)]
    bad = Outcome(y[2].id)  # still queued
    batch = [bad, *good] if bad_first else [*good, bad]
    await assert_refused(
        dsn, lambda: qm.complete_many(batch), InvalidTransition, str(y[2].id), "queued"
    )
    assert await statuses(qm, x) == [A, A, Q]  # x's completions and admission undone
    assert await statuses(qm, y) == [A, A, Q]
    stats = await qm.stats("two.x")
    assert (stats.active_count, stats.queue_length, stats.total_completed) == (2, 1, 0)


async def test_an_unknown_execution_in_a_batch_changes_nothing(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("done.unknown", max_concurrent=1)
    running, waiting = await qm.enqueue_many("done.unknown", [None, None])
    message = await assert_refused(
        dsn,
        lambda: qm.complete_many([Outcome(running.id), Outcome(UNKNOWN_ID)]),
        UnknownExecution,
        str(UNKNOWN_ID),
    )
    assert message == f"unknown execution {UNKNOWN_ID}"
    assert await statuses(qm, [running, waiting]) == [A, Q]


async def test_bad_outcomes_are_refused_before_anything_changes(
    small: QueueManager, dsn: str
) -> None:
    qm = small
    running, other = await qm.enqueue_many("done.input", [None, None])
    ok = Outcome(running.id, result={"ok": True})
    odd: Any = (running.id, None, None)
    cases: list[tuple[list[Any], str]] = [
        ([ok, Outcome(other.id), Outcome(running.id, error="x")], "more than once"),
        ([ok, odd], "fifoq.Outcome"),
        ([ok, running.id], "fifoq.Outcome"),
        ([ok, {"execution_id": other.id}], "fifoq.Outcome"),
        ([ok, Outcome(other.id, result=NotJson())], f"result of execution {other.id}"),
        ([ok, Outcome(other.id, result={"big": "x" * 100})], "over the limit of 64 bytes"),
        ([ok, Outcome(other.id, error=42)], "error must be a string"),  # type: ignore[arg-type]
        ([ok, Outcome(other.id, error="a\x00b")], "NUL"),
        ([ok, Outcome(True)], "integers"),
        ([ok, Outcome("7")], "integers"),  # type: ignore[arg-type]
    ]
    for outcomes, named in cases:
        await assert_refused(dsn, lambda o=outcomes: qm.complete_many(o), InvalidInput, named)
    for lone in (None, 5, ok):
        await assert_refused(
            dsn,
            lambda o=lone: qm.complete_many(o),  # type: ignore[arg-type]
            InvalidInput,
            "outcomes must be a list of fifoq.Outcome items",
        )
    assert await statuses(qm, [running, other]) == [A, A]


# -- enqueue_many: bad input ---------------------------------------------------------


@pytest.mark.parametrize(
    "payloads", ["abc", b"ab", {"a": 1}, None, 5], ids=lambda p: type(p).__name__
)
async def test_a_single_payload_where_a_list_belongs_is_refused(
    qm: QueueManager, dsn: str, payloads: Any
) -> None:
    await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.notlist", payloads),
        InvalidInput,
        "payloads must be a list",
        type(payloads).__name__,
    )


async def test_a_bad_payload_is_named_by_its_index_and_nothing_is_stored(
    small: QueueManager, dsn: str
) -> None:
    qm = small
    await qm.enqueue("many.badpayload")
    message = await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.badpayload", [{"ok": 1}, NotJson(), {"ok": 2}]),
        InvalidInput,
    )
    assert message.startswith("payload 1 for action 'many.badpayload' is not JSON-serialisable")
    await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.badpayload", [None, {}, {"k": "x" * 57}]),
        InvalidInput,
        "payload 2 for action 'many.badpayload' is 65 bytes of JSON, over the limit of 64 bytes",
    )
    await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.badpayload", [{"k": "a\x00b"}]),
        InvalidInput,
        "payload 0 for action 'many.badpayload' contains a NUL",
    )
    assert (await qm.stats("many.badpayload")).total_enqueued == 1


async def test_bad_names_in_a_batch_are_refused(qm: QueueManager, dsn: str) -> None:
    await assert_refused(dsn, lambda: qm.enqueue_many("bad\nname", [None]), InvalidInput, "action")
    await assert_refused(
        dsn, lambda: qm.enqueue_many("many.names", [None], group="x" * 256), InvalidInput, "group"
    )
    # A group taken from a payload is checked in the database, for every payload:
    # the good first one is not stored either.
    await qm.set_policy("many.derived", max_concurrent=1, group_by=("host",))
    message = await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.derived", [{"host": "good"}, {"host": "evil\nhost"}]),
        InvalidInput,
        "group name",
        "'many.derived'",
    )
    assert "\n" not in message
    assert await queue_ids(dsn, "many.derived") == {}


# -- sizes -------------------------------------------------------------------------


async def test_empty_batches_return_nothing_and_change_nothing(qm: QueueManager, dsn: str) -> None:
    await qm.enqueue("many.empty")
    before = await counts(dsn)
    assert await qm.enqueue_many("many.empty", []) == []
    assert await qm.enqueue_many("many.none-yet", iter(())) == []
    assert await qm.complete_many([]) == []
    assert await qm.complete_many(iter(())) == []
    assert await counts(dsn) == before


@pytest.mark.slow
async def test_ten_thousand_per_call_at_most(qm: QueueManager, dsn: str) -> None:
    await assert_refused(
        dsn,
        lambda: qm.enqueue_many("many.cap", [None] * (MAX_BATCH + 1)),
        InvalidInput,
        f"{MAX_BATCH + 1} in one call, over the limit of {MAX_BATCH}",
    )
    batch = await qm.enqueue_many("many.cap", ({"i": i} for i in range(MAX_BATCH)))
    assert [e.seq for e in batch] == list(range(1, MAX_BATCH + 1))
    assert [e.payload for e in batch] == [{"i": i} for i in range(MAX_BATCH)]
    # The check comes before anything else: these ids need not even exist.
    await assert_refused(
        dsn,
        lambda: qm.complete_many(Outcome(UNKNOWN_ID + i) for i in range(MAX_BATCH + 1)),
        InvalidInput,
        f"{MAX_BATCH + 1} in one call, over the limit of {MAX_BATCH}",
    )
    done = await qm.complete_many(Outcome(e.id, result=e.seq) for e in batch)
    assert [(d.id, d.result) for d in done] == [(e.id, e.seq) for e in batch]
    assert {d.status for d in done} == {Status.SUCCEEDED}
    stats = await qm.stats("many.cap")
    assert (stats.total_enqueued, stats.total_completed, stats.active_count) == (
        MAX_BATCH,
        MAX_BATCH,
        0,
    )


# -- statistics ----------------------------------------------------------------------


async def test_live_stats_follow_the_batches(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("many.stats", max_concurrent=2, max_queue_length=4, group_by=("h",))
    first = await qm.enqueue_many("many.stats", [{"h": "a", "n": i} for i in range(5)])
    stats = await qm.stats("many.stats", group="a")
    assert (stats.active_count, stats.queue_length, stats.total_enqueued) == (2, 3, 5)
    assert stats.oldest_enqueued_at == first[2].enqueued_at
    assert stats.max_concurrent == 2

    with pytest.raises(QueueFull):  # two more would wait: 5 of 4
        await qm.enqueue_many("many.stats", [{"h": "a"}, {"h": "a"}])
    unchanged = await qm.stats("many.stats", group="a")
    assert replace(unchanged, last_updated=stats.last_updated) == stats

    mixed = await qm.enqueue_many("many.stats", [{"h": "b"}, {"h": "a"}, {"h": "b"}, {"h": "b"}])
    await qm.complete_many(
        [Outcome(first[0].id), Outcome(first[1].id, error="x"), Outcome(mixed[0].id)]
    )
    a = await qm.stats("many.stats", group="a")
    b = await qm.stats("many.stats", group="b")
    assert (a.active_count, a.queue_length, a.total_enqueued) == (2, 2, 6)
    assert (a.total_completed, a.total_failed) == (2, 1)
    assert a.oldest_enqueued_at == first[4].enqueued_at
    assert (b.active_count, b.queue_length, b.total_enqueued, b.total_completed) == (2, 0, 3, 1)
    assert b.oldest_enqueued_at is None
    # The snapshot agrees once refreshed.
    await qm.refresh_stats()
    snapshot = {s.group: s for s in await qm.snapshot_stats() if s.action == "many.stats"}
    for live in (a, b):
        shot = snapshot[live.group]
        assert (shot.active_count, shot.queue_length, shot.total_enqueued) == (
            live.active_count,
            live.queue_length,
            live.total_enqueued,
        )
        assert (shot.total_completed, shot.total_failed) == (
            live.total_completed,
            live.total_failed,
        )
    # And the counters agree with the rows.
    rows = await fetch_rows(dsn, "many.stats")
    assert sum(r.status == "active" for r in rows) == 4
    assert sum(r.status == "queued" for r in rows) == 2


# -- from SQL ---------------------------------------------------------------------------

_SQL_ENQUEUE = """
SELECT id, "group", seq, status::text, payload
FROM fifoq.enqueue_many(%s, %s::jsonb[])
"""
_SQL_COMPLETE = """
SELECT id, status::text, result, error
FROM fifoq.complete_many(%s::bigint[], %s::jsonb[], %s::text[])
"""


async def test_sql_callers_get_the_same_batches_as_python(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("same.*", max_concurrent=2, group_by=("host",))
    payloads: list[Any] = [
        {"host": "a", "n": 0},
        {"host": "b", "n": 1},
        {"host": "a", "n": 2},
        {"host": "a", "n": 3},
        {"n": 4},
        None,
    ]
    from_python = await qm.enqueue_many("same.py", payloads)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            _SQL_ENQUEUE,
            ("same.sql", [None if p is None else json.dumps(p) for p in payloads]),
        )
        from_sql = await cur.fetchall()
        assert [(g or None, seq, Status(st), p) for _, g, seq, st, p in from_sql] == [
            (e.group, e.seq, e.status, e.payload) for e in from_python
        ]

        # Complete the two active ones of group a, in the same order on both sides.
        py_ids = [from_python[i].id for i in (2, 0)]
        sql_ids = [from_sql[i][0] for i in (2, 0)]
        done_py = await qm.complete_many([Outcome(py_ids[0], error="e"), Outcome(py_ids[1], 9)])
        cur = await conn.execute(_SQL_COMPLETE, (sql_ids, [None, "9"], ["e", None]))
        done_sql = await cur.fetchall()
        assert [row[0] for row in done_sql] == sql_ids
        assert [(Status(st), r, err) for _, st, r, err in done_sql] == [
            (d.status, d.result, d.error) for d in done_py
        ]

        # The queues are alike afterwards: group a's third one took a freed slot.
        cur = await conn.execute(
            'SELECT action, "group", seq, status::text FROM fifoq.execution_details'
            " WHERE action LIKE 'same.%' ORDER BY action, \"group\", seq"
        )
        by_action: dict[str, list[tuple[str, int, str]]] = {}
        for action, group, seq, status in await cur.fetchall():
            by_action.setdefault(action, []).append((group, seq, status))
        assert by_action["same.py"] == by_action["same.sql"]
        assert ("a", 3, "active") in by_action["same.sql"]

        # Empty and NULL arrays: no rows.
        for statement in (
            "SELECT * FROM fifoq.enqueue_many('same.sql', '{}')",
            "SELECT * FROM fifoq.enqueue_many('same.sql', NULL)",
            "SELECT * FROM fifoq.complete_many('{}', '{}', '{}')",
            "SELECT * FROM fifoq.complete_many(NULL, NULL, NULL)",
        ):
            assert await (await conn.execute(statement)).fetchall() == [], statement

        # The deferred forms, with the flush that follows them.
        cur = await conn.execute(
            "SELECT seq, status::text"
            " FROM fifoq.enqueue_many_deferred('same.deferred', %s::jsonb[])",
            (["1", "2", "3"],),
        )
        assert await cur.fetchall() == [(1, "active"), (2, "active"), (3, "queued")]
        await conn.execute("CALL fifoq.flush_and_notify()")
    assert (await qm.stats("same.deferred")).total_enqueued == 3


async def test_sql_callers_get_the_error_codes_and_nothing_changes(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("sqlerr.q", max_concurrent=1, max_queue_length=1)
    await qm.set_policy("sqlerr.r", max_concurrent=1, on_limit="reject")
    running, waiting = await qm.enqueue_many("sqlerr.q", [None, None])
    before = await counts(dsn)
    cases: list[tuple[str, tuple[Any, ...], str, str]] = [
        (_SQL_ENQUEUE, ("sqlerr.q", ["1"]), "FQ429", "queue full"),
        (_SQL_ENQUEUE, ("sqlerr.r", ["1", "2"]), "FQ403", "on_limit=reject"),
        (_SQL_ENQUEUE, ("bad\x01name", ["1"]), "FQ422", "action name"),
        (_SQL_COMPLETE, ([running.id], [None, None], [None]), "FQ422", "one result"),
        (_SQL_COMPLETE, ([running.id], [None], []), "FQ422", "one result"),
        (_SQL_COMPLETE, ([running.id, running.id], [None] * 2, [None] * 2), "FQ422", "twice"),
        (_SQL_COMPLETE, ([running.id, None], [None] * 2, [None] * 2), "FQ422", "NULL"),
        (_SQL_COMPLETE, ([running.id, UNKNOWN_ID], [None] * 2, [None] * 2), "FQ404", "unknown"),
        (_SQL_COMPLETE, ([running.id, waiting.id], [None] * 2, [None] * 2), "FQ409", "queued"),
    ]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for statement, params, sqlstate, named in cases:
            with pytest.raises(psycopg.Error) as info:
                await conn.execute(statement, params)
            assert info.value.sqlstate == sqlstate, (params, info.value)
            message = info.value.diag.message_primary or ""
            if named != "twice":
                assert named in message, (named, message)
            else:
                assert "more than once" in message, message
    assert await counts(dsn) == before


AWKWARD_TEXTS = [
    "",
    "NULL",
    "null",
    " padded ",
    "a,b",
    "{braces}",
    '"quoted"',
    "back\\slash",
    '\\"',
    "tab\tand\nnewline",
    "é ☃ 𝄞",
]


async def test_awkward_payloads_results_and_errors_travel_unchanged_in_batches(
    qm: QueueManager,
) -> None:
    # Batches send their lists as array literals (statements.array_literal):
    # quoting must keep every text exactly as given.
    await qm.set_policy("batch.awkward", max_concurrent=len(AWKWARD_TEXTS) * 2)
    payloads: list[Any] = [{"t": t, t: [t]} for t in AWKWARD_TEXTS] + list(AWKWARD_TEXTS)
    e = await qm.enqueue_many("batch.awkward", payloads)
    assert [(await qm.get(x.id)).payload for x in e] == payloads
    half = len(AWKWARD_TEXTS)
    done = await qm.complete_many(
        [Outcome(x.id, result={"r": t}) for x, t in zip(e[:half], AWKWARD_TEXTS, strict=True)]
        + [Outcome(x.id, error=t) for x, t in zip(e[half:], AWKWARD_TEXTS, strict=True)]
    )
    assert [d.result for d in done[:half]] == [{"r": t} for t in AWKWARD_TEXTS]
    assert [d.error for d in done[half:]] == AWKWARD_TEXTS
    assert [d.status for d in done] == [Status.SUCCEEDED] * half + [Status.FAILED] * half


async def test_workers_claim_actions_with_awkward_names(qm: QueueManager) -> None:
    # claim and complete_and_claim send their actions as array literals too.
    names = ["w.a,b", 'w."q"', "w.back\\slash", "w.{b}", "NULL", "w. padded "]
    for name in names:
        first, second = await qm.enqueue(name), await qm.enqueue(name)  # unlimited: both active
        claimed = await qm.claim([name], 1)
        assert [c.id for c in claimed] == [first.id], name
        _, more = await qm.complete_and_claim([Outcome(first.id)], [name], 1)
        assert [c.id for c in more] == [second.id], name
