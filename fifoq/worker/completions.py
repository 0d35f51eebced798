"""Group commit of completions: outcomes of handlers that finish together share one statement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from ..errors import InvalidInput, InvalidTransition, UnknownExecution
from ..manager import QueueManager
from ..models import Execution, Outcome

__all__ = ["CompletionBatcher"]

logger = logging.getLogger("fifoq.worker")

# Failures that belong to one outcome of a batch, not to the batch: the
# statement changed nothing, so each outcome is retried on its own to learn
# which one it was.
_PER_OUTCOME = (InvalidInput, InvalidTransition, UnknownExecution)

# An outcome, whether its slot may go straight to the next execution for
# this worker, and the caller waiting for the answer.
_Pending = tuple[Outcome, bool, "asyncio.Future[Execution]"]


class CompletionBatcher:
    """Records outcomes with :meth:`QueueManager.complete_and_claim`, many per statement.

    At most one statement is in flight: an outcome that arrives while one
    runs goes with the next, together with every other that arrived
    meanwhile. An idle worker therefore records a lone outcome at once, and
    a busy one pays the round trip, the queue lock and the disk flush once
    per batch instead of once per execution. Each caller gets its own
    execution back, or its own error.

    While ``claiming()`` is true, each statement also takes for this worker
    up to as many executions as the batch has outcomes handed in with
    ``keep_slot`` (the ones their freed slots admit, of ``actions``), and
    hands them to ``on_claimed`` before any caller of the batch resumes: the
    worker's count of running handlers never exceeds its concurrency, since
    the batch's handlers still count until then.
    """

    def __init__(
        self,
        qm: QueueManager,
        *,
        max_batch: int,
        actions: Sequence[str] | None = None,
        claiming: Callable[[], bool] = lambda: False,
        on_claimed: Callable[[list[Execution]], None] = lambda executions: None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch!r}")
        self._qm = qm
        self._max_batch = max_batch
        self._actions = list(actions) if actions else None
        self._claiming = claiming
        self._on_claimed = on_claimed
        self._pending: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None
        self.statements = 0  # sent, for the log and the tests
        self.claimed = 0  # executions taken along with completions

    async def complete(self, outcome: Outcome, *, keep_slot: bool = False) -> Execution:
        """Record one outcome; returns the completed execution, or raises as ``complete`` would.

        With ``keep_slot`` the execution its slot admits may come back to
        this worker in the same statement (see the class).
        """
        future: asyncio.Future[Execution] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, keep_slot, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="fifoq-completions")
        return await future

    @property
    def busy(self) -> bool:
        """Whether a statement is in flight (or outcomes wait for the next)."""
        return self._sender is not None and not self._sender.done()

    @property
    def sender(self) -> asyncio.Task[None] | None:
        """The task sending statements while :attr:`busy`, else None (to wait on it)."""
        return self._sender if self.busy else None

    async def aclose(self, *, timeout: float | None = None) -> bool:
        """Wait until every outcome handed in so far has been sent; True if they were.

        With ``timeout``, a statement still in flight then (a database that
        does not answer) is cancelled, and so are the outcomes waiting for
        the next: their callers' ``complete()`` is cancelled, and their
        executions stay active until the executor closes or is reaped.
        """
        if self._sender is None:
            return True
        cut = False
        if timeout is not None and not self._sender.done():
            await asyncio.wait({self._sender}, timeout=timeout)
            if not self._sender.done():
                self.cancel()
                cut = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        return not cut

    def cancel(self) -> None:
        """Stop sending: the statement in flight and every outcome waiting are cancelled."""
        pending, self._pending = self._pending, []
        for _, _, future in pending:
            future.cancel()
        if self._sender is not None:
            self._sender.cancel()

    async def _send(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            limit = sum(keep for _, keep, _ in batch) if self._claiming() else 0
            self.statements += 1
            try:
                completed, claimed = await self._qm.complete_and_claim(
                    [outcome for outcome, _, _ in batch], self._actions, limit
                )
            except _PER_OUTCOME as exc:
                if len(batch) == 1:
                    _fail(batch, exc)
                    continue
                logger.debug("a batch of %d outcomes was refused (%s); one by one", len(batch), exc)
                await asyncio.gather(*(self._send_one(o, f) for o, _, f in batch))
            except BaseException as exc:
                # Connection trouble and the like: every caller gets the
                # error its own complete() would have raised, and decides.
                _fail(batch, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                if claimed:
                    self.claimed += len(claimed)
                    self._on_claimed(claimed)
                for (_, _, future), execution in zip(batch, completed, strict=True):
                    if not future.done():
                        future.set_result(execution)

    async def _send_one(self, outcome: Outcome, future: asyncio.Future[Execution]) -> None:
        self.statements += 1
        try:
            execution = await self._qm.complete(
                outcome.execution_id, result=outcome.result, error=outcome.error
            )
        except BaseException as exc:
            _fail([(outcome, False, future)], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not future.done():
                future.set_result(execution)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for _, _, future in batch:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
