"""Value objects and the notification payload format."""

from __future__ import annotations

from datetime import UTC, datetime

from fifoq import Execution, Policy, QueueStats, Status
from fifoq.listener import executor_channel, parse_status_payload


def test_terminal_statuses() -> None:
    live = {Status.QUEUED, Status.ACTIVE}
    for status in Status:
        assert status.terminal is (status not in live)


def test_notification_payload_round_trip() -> None:
    execution_id, status, at = parse_status_payload("42 active 1767225600.25")
    assert (execution_id, status) == (42, Status.ACTIVE)
    assert at == datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert parse_status_payload("7 cancelled")[2] is None
    assert executor_channel(12) == "fifoq_executor_12"


def test_rows_build_values_with_the_default_group_as_none() -> None:
    now = datetime.now(UTC)
    execution = Execution.from_row(
        {
            "id": 1,
            "action": "a.b",
            "group": "",
            "seq": 3,
            "status": "queued",
            "payload": {"k": 1},
            "result": None,
            "error": None,
            "enqueued_at": now,
            "started_at": None,
            "finished_at": None,
            "owner": None,
        }
    )
    assert (execution.group, execution.status) == (None, Status.QUEUED)
    policy = Policy.from_row(
        {
            "action": "a.*",
            "max_concurrent": 2,
            "max_queue_length": 5,
            "queue_timeout": None,
            "on_limit": "reject",
            "group_by": ["host"],
        }
    )
    assert policy.group_by == ("host",)
    assert Policy.unlimited().max_concurrent is None
    stats = QueueStats.from_row(
        {
            "action": "a.b",
            "group": "g",
            "queue_length": 1,
            "active_count": 2,
            "max_concurrent": 2,
            "oldest_enqueued_at": now,
            "total_enqueued": 3,
            "total_completed": 0,
            "total_failed": 0,
            "total_cancelled": 0,
            "total_timed_out": 0,
            "total_abandoned": 0,
            "last_updated": now,
        }
    )
    assert (stats.group, stats.queue_length) == ("g", 1)
