"""Fixtures of the concurrency tests: a watchdog that shows what a stuck test waits on."""

from __future__ import annotations

from helpers import stuck_test_watchdog

__all__ = ["stuck_test_watchdog"]  # autouse: imported here, it applies to every test below
