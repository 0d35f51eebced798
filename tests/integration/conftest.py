"""Fixtures of the single-process API tests: connected executors on the test's own database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from helpers import watchdog

from fifoq import QueueManager

# A test that runs this long is stuck: print what every task waits on
# (pytest-timeout, which fires later, shows threads only).
WATCHDOG_SECONDS = 120.0


@pytest.fixture(autouse=True)
async def _watchdog() -> AsyncIterator[None]:
    task = asyncio.create_task(watchdog(WATCHDOG_SECONDS))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def qm(dsn: str) -> AsyncIterator[QueueManager]:
    """A connected executor with the default lease and a quick poll."""
    async with QueueManager.connect(dsn, name="test", poll_interval=0.2) as manager:
        yield manager
