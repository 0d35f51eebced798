"""Group commit of completions: outcomes of handlers that finish together share one statement."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..errors import InvalidInput, InvalidTransition, UnknownExecution
from ..manager import QueueManager
from ..models import Execution, Outcome

__all__ = ["CompletionBatcher"]

logger = logging.getLogger("fifoq.worker")

# Failures that belong to one outcome of a batch, not to the batch: the
# statement changed nothing, so each outcome is retried on its own to learn
# which one it was.
_PER_OUTCOME = (InvalidInput, InvalidTransition, UnknownExecution)


class CompletionBatcher:
    """Records outcomes with :meth:`QueueManager.complete_many`, many per statement.

    At most one statement is in flight: an outcome that arrives while one is
    runs goes with the next, together with every other that arrived
    meanwhile. An idle worker therefore records a lone outcome at once, and
    a busy one pays the round trip, the queue lock and the disk flush once
    per batch instead of once per execution. Each caller gets its own
    execution back, or its own error.
    """

    def __init__(self, qm: QueueManager, *, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}")
        self._qm = qm
        self._max_batch = max_batch
        self._pending: list[tuple[Outcome, asyncio.Future[Execution]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0  # statements sent, for the log and the tests

    async def complete(self, outcome: Outcome) -> Execution:
        """Record one outcome; returns the completed execution, or raises as ``complete`` would."""
        future: asyncio.Future[Execution] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="fifoq-completions")
        return await future

    async def aclose(self) -> None:
        """Wait until every outcome handed in so far has been sent."""
        if self._sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    async def _send(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            if len(batch) == 1:
                await self._send_one(*batch[0])
                continue
            self.batches += 1
            try:
                executions = await self._qm.complete_many([outcome for outcome, _ in batch])
            except _PER_OUTCOME as exc:
                logger.debug("a batch of %d outcomes was refused (%s); one by one", len(batch), exc)
                await asyncio.gather(*(self._send_one(o, f) for o, f in batch))
            except BaseException as exc:
                # Connection trouble and the like: every caller gets the
                # error its own complete() would have raised, and decides.
                _fail(batch, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                for (_, future), execution in zip(batch, executions, strict=True):
                    if not future.done():
                        future.set_result(execution)

    async def _send_one(self, outcome: Outcome, future: asyncio.Future[Execution]) -> None:
        self.batches += 1
        try:
            execution = await self._qm.complete(
                outcome.execution_id, result=outcome.result, error=outcome.error
            )
        except BaseException as exc:
            _fail([(outcome, future)], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not future.done():
                future.set_result(execution)


def _fail(batch: list[tuple[Outcome, asyncio.Future[Execution]]], exc: BaseException) -> None:
    for _, future in batch:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
