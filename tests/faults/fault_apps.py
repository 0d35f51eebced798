"""The App that `fifoq worker` processes run in the fault tests."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from fifoq import App

app = App("faults")


@app.action("kill.w", max_concurrent=2)
async def short_job(payload: dict[str, Any]) -> dict[str, Any]:
    """A few milliseconds of work, long enough for a SIGKILL to land inside a handler."""
    await asyncio.sleep(random.random() / 100)
    return {"t": payload["t"]}
