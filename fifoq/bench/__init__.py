"""`fifoq bench`: reproducible performance figures, against the targets and the ceiling."""

from __future__ import annotations

from .checks import GuaranteeViolated, Violation, check_database
from .runner import BenchOptions, BenchUsageError, run

__all__ = [
    "BenchOptions",
    "BenchUsageError",
    "GuaranteeViolated",
    "Violation",
    "check_database",
    "run",
]
