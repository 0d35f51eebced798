"""The values fifoq returns: executions, policies and queue statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Execution", "Outcome", "Policy", "Purged", "QueueStats", "Status"]


class Status(enum.StrEnum):
    """Lifecycle of an execution (SPEC §2)."""

    QUEUED = "queued"
    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    ABANDONED = "abandoned"

    @property
    def terminal(self) -> bool:
        """True for statuses that never change again."""
        return self not in (Status.QUEUED, Status.ACTIVE)


@dataclass(frozen=True, slots=True)
class Execution:
    """One request to run an action, as stored in ``fifoq.executions``."""

    id: int
    action: str
    group: str | None
    seq: int
    status: Status
    payload: Any
    result: Any
    error: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    owner: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Execution:
        """Build from a ``fifoq.execution_details`` row."""
        return cls(
            id=row["id"],
            action=row["action"],
            group=row["group"] or None,
            seq=row["seq"],
            status=Status(row["status"]),
            payload=row["payload"],
            result=row["result"],
            error=row["error"],
            enqueued_at=row["enqueued_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            owner=row["owner"],
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one active execution ended, for :meth:`QueueManager.complete_many`.

    ``succeeded`` with ``result``, or ``failed`` when ``error`` is given.
    """

    execution_id: int
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """The concurrency policy of an action, a pack (``pack.*``) or the default (``*``).

    ``None`` limits mean unlimited; that is the default until one is set.
    """

    action: str
    max_concurrent: int | None
    max_queue_length: int | None = None
    queue_timeout: float | None = None
    on_limit: str = "enqueue"
    group_by: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Policy:
        """Build from a ``fifoq.policies`` row."""
        return cls(
            action=row["action"],
            max_concurrent=row["max_concurrent"],
            max_queue_length=row["max_queue_length"],
            queue_timeout=row["queue_timeout"],
            on_limit=row["on_limit"],
            group_by=tuple(row["group_by"] or ()),
        )

    @classmethod
    def unlimited(cls) -> Policy:
        """The default policy in force while none was set."""
        return cls(action="*", max_concurrent=None)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Statistics of one queue (action, group)."""

    action: str
    group: str | None
    queue_length: int
    active_count: int
    max_concurrent: int | None
    oldest_enqueued_at: datetime | None
    total_enqueued: int
    total_completed: int
    total_failed: int
    total_cancelled: int
    total_timed_out: int
    last_updated: datetime
    total_abandoned: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueueStats:
        """Build from a ``fifoq.queue_stats`` or ``fifoq.queue_stats_live`` row."""
        return cls(
            action=row["action"],
            group=row["group"] or None,
            queue_length=row["queue_length"],
            active_count=row["active_count"],
            max_concurrent=row["max_concurrent"],
            oldest_enqueued_at=row["oldest_enqueued_at"],
            total_enqueued=row["total_enqueued"],
            total_completed=row["total_completed"],
            total_failed=row["total_failed"],
            total_cancelled=row["total_cancelled"],
            total_timed_out=row["total_timed_out"],
            total_abandoned=row["total_abandoned"],
            last_updated=row["last_updated"],
        )


@dataclass(frozen=True, slots=True)
class Purged:
    """What one :meth:`QueueManager.purge` call deleted."""

    executions: int
    executors: int
