"""Whatever a handler does, its execution ends and its slot goes to the next.

A handler outcome the worker could not record (a BaseException, its own
CancelledError, an error text PostgreSQL cannot hold) used to end the task
that ran it and leave the execution active, owned by a live worker, for as
long as that worker ran: its queue was stuck behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import wait_until

from fifoq import App, InvalidPolicy, QueueManager, Status
from fifoq.worker import Worker


class Abort(BaseException):
    """A BaseException of the handler's own."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def raise_surrogate_text(_: Any) -> None:
    # A file name that is not UTF-8, decoded as Python does.
    name = os.fsdecode(b"file-\xff.txt")
    raise FileNotFoundError(f"cannot open {name}")


async def await_a_cancelled_future(_: Any) -> None:
    future = asyncio.get_running_loop().create_future()
    future.cancel()  # cancelled by someone else, not by the worker
    await future


async def raise_abort(_: Any) -> None:
    raise Abort("handler gave up")


async def raise_unprintable(_: Any) -> None:
    raise Unprintable()


OUTCOMES: list[tuple[Callable[[Any], Awaitable[None]], str]] = [
    (raise_surrogate_text, "FileNotFoundError: cannot open file-\\udcff.txt"),
    (await_a_cancelled_future, "CancelledError"),
    (raise_abort, "Abort: handler gave up"),
    (raise_unprintable, "Unprintable: <the message could not be read: RuntimeError>"),
]


@pytest.mark.parametrize(("handler", "error"), OUTCOMES, ids=lambda v: getattr(v, "__name__", ""))
async def test_a_handler_outcome_of_any_kind_fails_the_execution_and_frees_the_slot(
    qm: QueueManager, dsn: str, handler: Callable[[Any], Awaitable[None]], error: str
) -> None:
    app = App()
    app.action("wo.odd", max_concurrent=1)(handler)
    first = await qm.enqueue("wo.odd", {"n": 1})
    second = await qm.enqueue("wo.odd", {"n": 2})
    worker = Worker(app, dsn, concurrency=2, claim_interval=0.2)
    running = asyncio.create_task(worker.run())
    try:
        await worker.wait_ready()

        async def both_finished() -> bool:
            found = [await qm.get(e.id) for e in (first, second)]
            return all(e.status.terminal for e in found)

        await wait_until(both_finished, timeout=15, message="both executions finished")
    finally:
        worker.stop()
        await running
    for execution in (first, second):
        done = await qm.get(execution.id)
        assert (done.status, done.error) == (Status.FAILED, error)


async def test_a_handler_that_swallows_its_timeout_still_fails_by_it(
    qm: QueueManager, dsn: str
) -> None:
    app = App()

    @app.action("wo.stubborn", max_concurrent=1, timeout=0.2)
    async def stubborn(_: Any) -> str:
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.6
        while loop.time() < until:
            with contextlib.suppress(asyncio.CancelledError):  # ignores cancellation
                await asyncio.sleep(0.05)  # simulated work
        return "late"

    execution = await qm.enqueue("wo.stubborn")
    worker = Worker(app, dsn, claim_interval=0.2)
    running = asyncio.create_task(worker.run())
    try:
        await worker.wait_ready()

        async def finished() -> bool:
            return (await qm.get(execution.id)).status.terminal

        await wait_until(finished, timeout=15, message="execution finished")
    finally:
        worker.stop()
        await running
    done = await qm.get(execution.id)
    assert done.status is Status.FAILED and done.result is None
    assert done.error is not None and "longer than its timeout of 0.2 s" in done.error


async def test_system_exit_in_a_handler_fails_it_and_stops_the_worker_gracefully(
    qm: QueueManager, dsn: str
) -> None:
    app = App()
    gate = asyncio.Event()

    @app.action("wo.exit")
    async def exits(_: Any) -> None:
        await gate.wait()  # raise only once the other handler is running
        raise SystemExit(3)

    @app.action("wo.busy")
    async def busy(_: Any) -> str:
        gate.set()
        await asyncio.sleep(0.3)  # simulated work, within the grace period
        return "finished"

    leaving = await qm.enqueue("wo.exit")
    working = await qm.enqueue("wo.busy")
    worker = Worker(app, dsn, concurrency=2, grace=10, claim_interval=0.2)
    # run() returns by itself: the SystemExit stopped the worker as SIGTERM would.
    await asyncio.wait_for(worker.run(), timeout=30)
    left = await qm.get(leaving.id)
    assert (left.status, left.error) == (Status.FAILED, "SystemExit: 3")
    finished = await qm.get(working.id)
    assert (finished.status, finished.result) == (Status.SUCCEEDED, "finished")


def test_policy_arguments_without_a_limit_are_refused_not_dropped() -> None:
    app = App()
    with pytest.raises(InvalidPolicy, match="group_by given without max_concurrent"):
        app.action("wo.groups", group_by=("host",))
    with pytest.raises(InvalidPolicy, match="on_limit given without max_concurrent"):
        app.action("wo.reject", on_limit="reject")
    app.action("wo.fine", group_by=("host",), max_concurrent=2)  # with a limit: accepted


async def test_a_worker_replacing_a_different_policy_warns_with_the_differences(
    qm: QueueManager, caplog: pytest.LogCaptureFixture
) -> None:
    await qm.set_policy("wo.limits", max_concurrent=2)
    app = App()
    app.action("wo.limits", max_concurrent=5)(raise_abort)
    with caplog.at_level(logging.WARNING, logger="fifoq.worker"):
        [policy] = await app.apply_policies(qm)
        assert policy.max_concurrent == 5  # the last worker to start wins
        await app.apply_policies(qm)  # the same policy again: nothing to say
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "policy of wo.limits replaced by this app's: max_concurrent 2 -> 5 "
        "(do all workers of it declare the same policy?)"
    ]
