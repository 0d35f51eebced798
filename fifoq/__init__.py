"""fifoq: a PostgreSQL-resident FIFO execution queue with per-action concurrency limits."""

from __future__ import annotations

from .errors import (
    ExecutionAbandoned,
    ExecutionCancelled,
    ExecutorGone,
    FifoqError,
    InvalidInput,
    InvalidPolicy,
    InvalidPolicyName,
    InvalidTransition,
    OutcomeUnknown,
    PolicyRejected,
    QueueFull,
    QueueTimeout,
    UnknownExecution,
)
from .manager import QueueManager
from .migrations import migrate, rollback
from .models import Execution, Outcome, Policy, Purged, QueueStats, Status
from .worker import App, Worker

__all__ = [
    "App",
    "Execution",
    "ExecutionAbandoned",
    "ExecutionCancelled",
    "ExecutorGone",
    "FifoqError",
    "InvalidInput",
    "InvalidPolicy",
    "InvalidPolicyName",
    "InvalidTransition",
    "Outcome",
    "OutcomeUnknown",
    "Policy",
    "PolicyRejected",
    "Purged",
    "QueueFull",
    "QueueManager",
    "QueueStats",
    "QueueTimeout",
    "Status",
    "UnknownExecution",
    "Worker",
    "migrate",
    "rollback",
]

__version__ = "0.1.0"
