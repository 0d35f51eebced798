"""Fixtures of the concurrency tests: a watchdog that shows what a stuck test waits on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from helpers import watchdog

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
