"""Group commit of completions: outcomes of handlers that finish together share one statement."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence

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
# this worker, the caller waiting for the answer, and the outcome's queue.
_Pending = tuple[Outcome, bool, "asyncio.Future[Execution]", Hashable]

# Seconds a statement may be in flight before outcomes of other queues stop
# waiting for it. Normally it answers in a few milliseconds, and what
# arrives meanwhile goes with the next (group commit). One that takes longer
# is most likely waiting for a queue lock that another transaction holds (a
# client that enqueued into that queue and has not committed): the other
# queues' outcomes must not wait with it (SPEC §3.6).
_STUCK_AFTER = 0.05


class CompletionBatcher:
    """Records outcomes with :meth:`QueueManager.complete_and_claim`, many per statement.

    One statement at a time while statements answer promptly: an outcome
    that arrives while one runs goes with the next, together with every
    other that arrived meanwhile. An idle worker therefore records a lone
    outcome at once, and a busy one pays the round trip, the queue lock and
    the disk flush once per batch instead of once per execution. Each caller
    gets its own execution back, or its own error.

    Outcomes name their queue (``queue``). A statement in flight for longer
    than ``_STUCK_AFTER`` (waiting for a queue lock, say) holds back only
    the outcomes of its own queues: the others go in a statement of their
    own beside it. Two statements in flight never share a queue, so each
    queue's outcomes and claims still go one statement after another.

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
        # Statements in flight: their queues and when they were sent.
        self._in_flight: dict[asyncio.Task[None], tuple[frozenset[Hashable], float]] = {}
        self._pump_scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self.statements = 0  # sent, for the log and the tests
        self.claimed = 0  # executions taken along with completions

    async def complete(
        self, outcome: Outcome, *, keep_slot: bool = False, queue: Hashable = None
    ) -> Execution:
        """Record one outcome; returns the completed execution, or raises as ``complete`` would.

        With ``keep_slot`` the execution its slot admits may come back to
        this worker in the same statement (see the class). ``queue`` names
        the execution's queue, e.g. ``(action, group)``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Execution] = loop.create_future()
        self._pending.append((outcome, keep_slot, future, queue))
        if self._pump_scheduled is None:
            # Soon, not now: outcomes handed in together go together.
            self._pump_scheduled = loop.call_soon(self._pump)
        return await future

    @property
    def busy(self) -> bool:
        """Whether a statement is in flight (or outcomes wait for the next)."""
        return bool(self._in_flight) or bool(self._pending)

    @property
    def senders(self) -> set[asyncio.Task[None]]:
        """The statements in flight (to wait on them)."""
        return set(self._in_flight)

    async def aclose(self, *, timeout: float | None = None) -> bool:
        """Wait until every outcome handed in so far has been sent; True if they were.

        With ``timeout``, statements still in flight then (a database that
        does not answer) are cancelled, and so are the outcomes waiting for
        the next: their callers' ``complete()`` is cancelled, and their
        executions stay active until the executor closes or is reaped.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._in_flight or self._pending:
            if not self._in_flight:  # outcomes handed in, their statement not sent yet
                self._pump()
                continue
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                cut = set(self._in_flight)
                self.cancel()
                await asyncio.wait(cut)  # each ends at its cancellation
                return False
            await asyncio.wait(set(self._in_flight), timeout=left)
        return True

    def cancel(self) -> None:
        """Stop sending: the statements in flight and every outcome waiting are cancelled."""
        pending, self._pending = self._pending, []
        for _, _, future, _ in pending:
            future.cancel()
        if self._pump_scheduled is not None:
            self._pump_scheduled.cancel()
            self._pump_scheduled = None
        for task in self._in_flight:
            task.cancel()

    def _pump(self) -> None:
        """Send what may go now: a batch of the outcomes whose queues no statement holds."""
        self._pump_scheduled = None
        loop = asyncio.get_running_loop()
        while self._pending:
            if self._in_flight:
                newest = max(sent for _, sent in self._in_flight.values())
                wait = _STUCK_AFTER - (loop.time() - newest)
                if wait > 0:  # it should answer soon: the next batch waits for it
                    self._pump_scheduled = loop.call_later(wait, self._pump)
                    return
            held = set().union(*(queues for queues, _ in self._in_flight.values()))
            batch: list[_Pending] = []
            waiting: list[_Pending] = []
            for pending in self._pending:
                free = pending[3] not in held and len(batch) < self._max_batch
                (batch if free else waiting).append(pending)
            if not batch:
                return  # all wait for their queues' statements; sent when those end
            self._pending = waiting
            task = asyncio.create_task(self._send(batch), name="fifoq-completions")
            self._in_flight[task] = (frozenset(p[3] for p in batch), loop.time())
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        if self._pending:  # what arrived meanwhile goes now, as the next batch
            if self._pump_scheduled is not None:
                self._pump_scheduled.cancel()
            self._pump()

    async def _send(self, batch: list[_Pending]) -> None:
        limit = sum(keep for _, keep, _, _ in batch) if self._claiming() else 0
        self.statements += 1
        try:
            completed, claimed = await self._qm.complete_and_claim(
                [outcome for outcome, _, _, _ in batch], self._actions, limit
            )
        except _PER_OUTCOME as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            logger.debug("a batch of %d outcomes was refused (%s); one by one", len(batch), exc)
            await asyncio.gather(*(self._send_one(o, f) for o, _, f, _ in batch))
        except BaseException as exc:
            # Connection trouble and the like: every caller gets the error
            # its own complete() would have raised, and decides.
            _fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if claimed:
                self.claimed += len(claimed)
                self._on_claimed(claimed)
            for (_, _, future, _), execution in zip(batch, completed, strict=True):
                if not future.done():
                    future.set_result(execution)

    async def _send_one(self, outcome: Outcome, future: asyncio.Future[Execution]) -> None:
        self.statements += 1
        try:
            execution = await self._qm.complete(
                outcome.execution_id, result=outcome.result, error=outcome.error
            )
        except BaseException as exc:
            _fail([(outcome, False, future, None)], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not future.done():
                future.set_result(execution)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for _, _, future, _ in batch:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
