"""The App that the end-to-end tests run in real ``fifoq worker`` processes."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from fifoq import App
from fifoq.worker import current_execution

app = App("e2e")


def _mark(payload: dict[str, Any], event: str) -> None:
    # Marker files tell the test, from another process, what the handler did.
    Path(payload["dir"], f"{payload['name']}.{event}").write_text(event)


@app.action("e2e.echo", max_concurrent=3)
async def echo(payload: Any) -> dict[str, Any]:
    """Return the payload and the execution's id."""
    return {"echo": payload, "id": current_execution().id}


@app.action("e2e.fail", max_concurrent=2)
async def fail(payload: dict[str, Any]) -> None:
    """Always raise."""
    raise ValueError(f"bad input {payload['n']}")


@app.action("e2e.unserialisable", max_concurrent=1)
async def unserialisable(payload: Any) -> object:
    """Return something that is not JSON."""
    return {1, 2, 3}


@app.action("e2e.sleep", max_concurrent=1)
async def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep, leaving marker files: <name>.started, then .finished or .cancelled."""
    _mark(payload, "started")
    try:
        await asyncio.sleep(payload["seconds"])
    except asyncio.CancelledError:
        _mark(payload, "cancelled")
        raise
    _mark(payload, "finished")
    return {"slept": payload["seconds"]}


@app.action("e2e.timeout", max_concurrent=1, timeout=0.5)
async def slow(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep for payload seconds; the action's handler timeout is half a second."""
    await asyncio.sleep(payload["seconds"])
    return {"slept": payload["seconds"]}


@app.action("e2e.order", max_concurrent=10)
async def order(payload: dict[str, Any]) -> None:
    """Append the payload's index to a log file first thing, then take a little time."""
    with open(payload["log"], "a") as log:
        log.write(f"{payload['i']}\n")
    await asyncio.sleep(random.uniform(0, 0.01))


@app.action("e2e.limit", max_concurrent=3)
async def limited(payload: dict[str, Any]) -> dict[str, Any]:
    """Take 1-10 ms."""
    await asyncio.sleep(random.uniform(0.001, 0.01))
    return {"i": payload["i"]}


@app.action("e2e.stubborn", max_concurrent=1)
async def stubborn(payload: dict[str, Any]) -> None:
    """Ignore every cancellation for payload seconds (a badly written handler)."""
    _mark(payload, "started")
    loop = asyncio.get_running_loop()
    until = loop.time() + payload["seconds"]
    while loop.time() < until:
        try:
            await asyncio.sleep(until - loop.time())
        except asyncio.CancelledError:
            _mark(payload, "ignored")
