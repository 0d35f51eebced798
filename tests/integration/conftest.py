"""Fixtures of the single-process API tests: connected executors on the test's own database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from helpers import stuck_test_watchdog

from fifoq import QueueManager

__all__ = ["stuck_test_watchdog"]  # autouse: imported here, it applies to every test below


@pytest.fixture
async def qm(dsn: str) -> AsyncIterator[QueueManager]:
    """A connected executor with the default lease and a quick poll."""
    async with QueueManager.connect(dsn, name="test", poll_interval=0.2) as manager:
        yield manager
