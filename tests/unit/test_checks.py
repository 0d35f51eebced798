"""The FIFO and limit checks of tests/helpers.py catch what they claim to catch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from helpers import Row, assert_fifo_and_limit, max_overlap, queue_violations

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def row(
    seq: int,
    enq: float,
    start: float | None,
    end: float | None,
    status: str = "succeeded",
    *,
    action: str = "a",
) -> Row:
    return Row(
        id=seq,
        action=action,
        group="",
        seq=seq,
        status=status,
        owner=None,
        enqueued_at=at(enq),
        started_at=None if start is None else at(start),
        finished_at=None if end is None else at(end),
    )


def test_a_clean_fifo_run_passes() -> None:
    rows = [row(1, 0, 1, 10), row(2, 1, 10, 20), row(3, 2, 20, None, "active")]
    assert queue_violations(rows, 1) == []
    assert max_overlap(rows) == 1


def test_hand_off_at_the_same_instant_is_not_an_overlap() -> None:
    assert max_overlap([row(1, 0, 0, 5), row(2, 0, 5, 9)]) == 1


def test_more_active_than_the_limit_is_caught() -> None:
    rows = [row(1, 0, 1, 10), row(2, 0, 2, 20), row(3, 0, 11, 30)]
    assert max_overlap(rows) == 2
    assert queue_violations(rows, 1) == ["2 executions active at once, limit 1"]
    assert queue_violations(rows, 2) == []


def test_a_later_seq_starting_first_is_caught() -> None:
    rows = [row(1, 0, 5, 10), row(2, 1, 3, 8)]
    problems = queue_violations(rows, None)
    assert "seq 2 started before seq 1" in problems
    assert "seq 2 started while seq 1 was still waiting" in problems


def test_jumping_a_waiter_that_never_started_is_caught() -> None:
    # seq 2 waits forever (or is cancelled later); seq 3 starts meanwhile.
    still_queued = [row(1, 0, 0, 10), row(2, 1, None, None, "queued"), row(3, 2, 10, 12)]
    assert queue_violations(still_queued, 1) == ["seq 3 started while seq 2 was still waiting"]
    cancelled_late = [row(1, 0, 0, 10), row(2, 1, None, 11, "cancelled"), row(3, 2, 10, 12)]
    assert queue_violations(cancelled_late, 1) == ["seq 3 started while seq 2 was still waiting"]


def test_a_waiter_that_left_before_the_next_started_is_fine() -> None:
    rows = [row(1, 0, 0, 10), row(2, 1, None, 5, "cancelled"), row(3, 2, 10, 12)]
    assert queue_violations(rows, 1) == []


def test_seq_out_of_enqueue_order_and_duplicates_are_caught() -> None:
    problems = queue_violations(
        [row(1, 5, None, None, "queued"), row(2, 4, None, None, "queued")], 1
    )
    assert problems == ["seq 2 was enqueued before seq 1"]
    assert "duplicate seq numbers" in queue_violations([row(1, 0, 0, 1), row(1, 0, 1, 2)], 1)


def test_assert_fifo_and_limit_checks_each_queue_on_its_own() -> None:
    # Two queues, each at its limit of 1: together 2 at once, which is fine.
    rows = [row(1, 0, 0, 10, action="a"), row(1, 0, 0, 10, action="b")]
    assert_fifo_and_limit(rows, 1)
    with pytest.raises(AssertionError, match=r"a/-: 2 executions active at once"):
        assert_fifo_and_limit([*rows, row(2, 1, 5, 6, action="a")], 1)
