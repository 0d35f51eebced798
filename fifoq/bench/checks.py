"""FIFO, limit and counter checks run from the database after every workload."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from .queries import query

__all__ = ["GuaranteeViolated", "Violation", "check_database"]

_CHECKS = ("check_limit", "check_fifo", "check_counters")


@dataclass(frozen=True)
class Violation:
    """One broken guarantee found in the history of a queue."""

    kind: str  # "limit", "fifo" or "counters"
    action: str
    group: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.action!r}" + (f" (group {self.group!r})" if self.group else "")
        return f"{self.kind} violated in queue {where}: {self.detail}"


class GuaranteeViolated(RuntimeError):
    """A workload broke FIFO order, the limit or the queue counters."""

    def __init__(self, workload: str, violations: list[Violation]) -> None:
        self.workload = workload
        self.violations = violations
        first = violations[0] if violations else "no detail"
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"workload {workload}: {first}{more}")


def check_database(conninfo: str) -> list[Violation]:
    """Every violation of the limit, FIFO order and the queue counters in this database.

    Reads the whole history of ``fifoq.executions``: the benchmark runs each
    workload in a scratch database of its own, so that history is the
    workload's.
    """
    found: list[Violation] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in _CHECKS:
            for kind, action, group, detail in conn.execute(query(name), {}).fetchall():
                found.append(Violation(kind, action, group, detail))
    return found
