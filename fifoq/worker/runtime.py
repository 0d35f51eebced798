"""Worker: claims admitted executions of an App's actions and runs their handlers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ..dsn import describe
from ..errors import FifoqError, InvalidInput, InvalidTransition
from ..manager import QueueManager
from ..models import Execution, Outcome, Status
from .app import ActionSpec, App
from .completions import CompletionBatcher

__all__ = ["AppLoadError", "Worker", "current_execution", "load_app"]

logger = logging.getLogger("fifoq.worker")

_MAX_ERROR_CHARS = 64 * 1024  # an error text is for people; keep huge messages out of the row
_COMPLETE_ATTEMPTS = 4
_FINISHED_KEPT = 4096  # ids of executions that ended here, remembered (see Worker._finished_ids)
_SETTLE_SECONDS = 5.0  # after the grace period: time for cancelled handlers to unwind
_MAX_BACKOFF = 0.02  # longest pause of a worker that keeps losing claims to others


_current: ContextVar[Execution] = ContextVar("fifoq_current_execution")


def current_execution() -> Execution:
    """The execution whose handler is running (call it from inside a handler).

    Gives a handler its execution's id, group, seq and timestamps besides the
    payload. Raises ``LookupError`` outside a handler.
    """
    return _current.get()


class AppLoadError(Exception):
    """``MODULE:APP`` does not name an importable ``fifoq.App``."""


def load_app(spec: str) -> App:
    """Import ``module.path:attribute`` (attribute defaults to ``app``) and return the App.

    The current directory is put first on ``sys.path`` so that an
    application module next to where the worker starts can be found.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"expected MODULE:APP such as 'myapp.tasks:app', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"no module named {exc.name!r} (from {spec!r})") from exc
        raise
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, App):
        raise AppLoadError(
            f"{spec!r} is a {type(target).__name__}, not a fifoq.App (create one with fifoq.App())"
        )
    return target


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` (just the type name when the message is empty), storable.

    Whatever the exception holds: a ``__str__`` that raises gives a note
    instead of the message, and NUL and lone surrogates (say, a file name
    decoded with ``os.fsdecode``), which PostgreSQL text cannot hold, are
    written as escapes.
    """
    try:
        message = str(exc)
    except Exception as str_failed:
        message = f"<the message could not be read: {type(str_failed).__name__}>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + "... (truncated)"
    return text


def _timed_out(spec: ActionSpec) -> str:
    """The error of an execution whose handler ran past its action's timeout."""
    return (
        f"TimeoutError: the handler ran longer than its timeout of {spec.timeout:g} s "
        "and was cancelled"
    )


@dataclass(eq=False)
class _Running:
    """One execution this worker is running."""

    execution: Execution
    spec: ActionSpec
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    # "cancelled" / "abandoned" (by the database), "shutdown", "unconfirmed" (outcome cut)
    stop_reason: str | None = None
    completing: bool = False
    recorded: bool = False
    unsubscribe: Any = None


class Worker:
    """Runs the handlers of an :class:`App` for admitted executions, in admission order.

    Producers only enqueue. Admission (the slot) is decided in the database;
    the worker takes admitted executions nobody owns with ``claim``, which
    returns each queue's in seq order, and starts their handlers in that
    order. It learns of new work from NOTIFY and from a periodic claim, so a
    lost notification only delays it by ``claim_interval``.

    ``stop()`` (SIGTERM/SIGINT under :meth:`run` with ``handle_signals``)
    stops claiming and lets running handlers finish for ``grace`` seconds;
    what still runs then is cancelled and handed back: the executor closes
    and the database marks those executions ``abandoned`` (terminal; they are
    not run again). A second signal cancels at once.

    Outcomes of handlers that finish together are recorded in one statement
    (:class:`CompletionBatcher`). When a handler took less than
    ``keep_slot_under`` seconds, that statement also gives this worker the
    execution its freed slot admits, if nobody owns it: busy queues of short
    work then cost one statement per batch instead of a NOTIFY to every
    worker and a claim, while the slots of longer handlers are offered to
    all workers, so long work spreads over them. 0 turns this off.

    After :meth:`run`: ``completed`` counts the outcomes recorded,
    ``handed_back`` lists the executions handed back at the stop,
    ``unconfirmed`` those whose outcome was sent but not confirmed (the
    database did not answer), and ``stuck`` those whose handler ignored
    its cancellation.
    """

    def __init__(
        self,
        app: App,
        conninfo: str = "",
        *,
        concurrency: int = 10,
        actions: Sequence[str] | None = None,
        grace: float = 30.0,
        claim_interval: float = 0.5,
        apply_policies: bool = True,
        name: str | None = None,
        lease: float = 5.0,
        keep_slot_under: float = 0.1,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        if not grace >= 0:
            raise ValueError(f"grace must be zero or more seconds, got {grace!r}")
        if not claim_interval > 0:
            raise ValueError(f"claim_interval must be positive, got {claim_interval!r}")
        if not keep_slot_under >= 0:
            raise ValueError(
                f"keep_slot_under must be zero or more seconds, got {keep_slot_under!r}"
            )
        if len(app) == 0:
            raise ValueError("the app has no actions: register handlers with @app.action(...)")
        selected = list(dict.fromkeys(actions)) if actions else sorted(app.actions)
        unknown = [a for a in selected if a not in app]
        if unknown:
            raise ValueError(
                f"unknown action(s) {', '.join(map(repr, unknown))}; "
                f"the app has {', '.join(sorted(app.actions))}"
            )
        self.app = app
        self.conninfo = conninfo
        self.concurrency = concurrency
        self.actions = selected
        self.grace = grace
        self.claim_interval = claim_interval
        self.apply_policies = apply_policies
        self.name = name
        self.lease = lease
        self.keep_slot_under = keep_slot_under
        self.executor_id: int | None = None
        self.handed_back: list[int] = []
        # Executions whose outcome statement was cut at a stop (the database
        # did not answer): recorded, or abandoned with the executor.
        self.unconfirmed: list[int] = []
        self.completed = 0
        self._running: dict[int, _Running] = {}
        # Executions that ran here and ended (recorded, or given up on), the
        # newest _FINISHED_KEPT: never started again, by adoption or by a
        # completion's answer that comes back after adoption ran them.
        self._finished_ids: dict[int, None] = {}
        self._wake = asyncio.Event()
        self._notified = False
        self._stopping = False
        self._ran = False
        self._force = asyncio.Event()
        self._stop_requested = asyncio.Event()  # set by stop(); ends a claim's wait
        self._ready = asyncio.Event()
        self._completions: CompletionBatcher | None = None
        self._failure: BaseException | None = None  # what ended run() before it was ready
        # Handlers that ignored cancellation and outlived the settling time
        # after the grace period (their executions were handed back anyway).
        self.stuck: list[int] = []

    # -- control -----------------------------------------------------------

    @property
    def running(self) -> list[Execution]:
        """The executions whose handlers run now."""
        return [r.execution for r in self._running.values()]

    async def wait_ready(self) -> None:
        """Return once the worker is connected, has applied its policies and claims work.

        If :meth:`run` ends before that (the server cannot be reached, a
        policy is refused), raises what ended it instead of waiting forever.
        """
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Stop claiming and finish gracefully; called a second time, cancel handlers now."""
        if self._stopping:
            if not self._force.is_set():
                logger.warning("second stop request: cancelling running handlers now")
                self._force.set()
            return
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        logger.info(
            "stop requested: no new work; %d running handler(s) get %g s to finish",
            len(self._running),
            self.grace,
        )

    async def run(self, *, handle_signals: bool = False) -> None:
        """Connect, apply the app's policies, and run handlers until :meth:`stop`.

        With ``handle_signals`` SIGTERM and SIGINT call :meth:`stop` (only in
        the main thread). A Worker runs once; a second call raises RuntimeError.
        """
        if self._ran:
            # Its stop state, counters and handed-back list are this run's.
            raise RuntimeError("a Worker runs once: create a new one to run again")
        self._ran = True
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        try:
            if handle_signals:
                if threading.current_thread() is not threading.main_thread():
                    raise RuntimeError(
                        "Worker.run(handle_signals=True) must run in the main thread; "
                        "elsewhere call worker.stop() yourself"
                    )
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
            async with QueueManager.connect(
                self.conninfo,
                name=self.name,
                lease=self.lease,
                max_size=min(self.concurrency + 2, 20),
            ) as qm:
                self.executor_id = qm.executor_id
                # Completions also take the work the slots they free admit.
                self._completions = CompletionBatcher(
                    qm,
                    max_batch=self.concurrency,
                    actions=self.actions,
                    claiming=lambda: not self._stopping,
                    on_claimed=lambda claimed: self._start_all(qm, claimed),
                )
                try:
                    await self._serve(qm)
                finally:
                    await self._drain()
                    # Outcomes of handlers that ended while draining: sent
                    # unless the database does not answer (then their
                    # executions stay active until the executor closes or is
                    # reaped, and are abandoned).
                    if not await self._completions.aclose(timeout=_SETTLE_SECONDS):
                        logger.warning(
                            "outcomes sent at the stop were not confirmed in %g s (is the "
                            "database reachable?)",
                            _SETTLE_SECONDS,
                        )
                    if self.unconfirmed:
                        logger.warning(
                            "the outcomes of %d execution(s) were sent but not confirmed (the "
                            "database did not answer): %s; each was recorded, or is abandoned "
                            "when this executor closes or its lease runs out",
                            len(self.unconfirmed),
                            ", ".join(map(str, self.unconfirmed)),
                        )
                    self.executor_id = qm.executor_id  # a new one if it was reaped and rejoined
                if self.handed_back:
                    logger.warning(
                        "handing back %d execution(s) still running when the worker stopped "
                        "(the grace period ran out, or a second signal came): %s; closing the "
                        "executor marks them abandoned (they are not run again)",
                        len(self.handed_back),
                        ", ".join(map(str, self.handed_back)),
                    )
            logger.info(
                "worker stopped (executor %s): %d execution(s) completed, %d handed back, "
                "%d unconfirmed",
                self.executor_id,
                self.completed,
                len(self.handed_back),
                len(self.unconfirmed),
            )
        except BaseException as exc:
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()  # wake wait_ready(), which raises it
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    # -- claiming ----------------------------------------------------------

    async def _serve(self, qm: QueueManager) -> None:
        if self.apply_policies:
            for policy in await self.app.apply_policies(qm, self.actions):
                logger.info(
                    "policy %s: max_concurrent=%s max_queue_length=%s queue_timeout=%s "
                    "on_limit=%s group_by=%s",
                    policy.action,
                    policy.max_concurrent,
                    policy.max_queue_length,
                    policy.queue_timeout,
                    policy.on_limit,
                    ",".join(policy.group_by) or "-",
                )
        wanted = set(self.actions)

        def on_work(action: str) -> None:
            if action in wanted:
                self._notified = True
                self._wake.set()

        qm.listen_for_work(on_work)
        # A claim or completion whose answer was lost after it committed
        # leaves executions this executor took that the worker never heard
        # of; they would hold their slots until it exits (see adopt).
        qm.on_claims_in_doubt(self._wake.set)
        adopted = qm.claims_in_doubt
        logger.info(
            "worker ready: executor %s on %s, actions %s, concurrency %d",
            qm.executor_id,
            describe(self.conninfo),
            ", ".join(self.actions),
            self.concurrency,
        )
        self._ready.set()
        failures = 0
        backoff = 0.0
        while not self._stopping:
            if qm.claims_in_doubt != adopted:
                # No claim of this loop is in flight now; one of the
                # completions' may be, and hand over what adopt also
                # returns: _start skips what already runs.
                adopted = qm.claims_in_doubt
                try:
                    orphans = await qm.adopt(self.actions, [*self._running, *self._finished_ids])
                except (psycopg.Error, FifoqError, OSError) as exc:
                    adopted -= 1  # again on the next turn
                    logger.warning("adopting failed (%s); retrying", describe_error(exc))
                    await asyncio.sleep(0.1)
                    continue
                if orphans:
                    logger.warning(
                        "adopting %d execution(s) a claim took whose answer was lost: %s",
                        len(orphans),
                        ", ".join(str(e.id) for e in orphans),
                    )
                    self._start_all(qm, orphans)
            free = self.concurrency - len(self._running)
            claimed: list[Execution] = []
            if free > 0:
                # Cleared before claiming: a notification that arrives while
                # the claim runs sets it again, so no wake-up is lost.
                self._wake.clear()
                notified, self._notified = self._notified, False
                try:
                    claimed = await self._claim(qm, free)
                    failures = 0
                except (psycopg.Error, FifoqError, OSError) as exc:
                    failures += 1
                    logger.warning("claim failed (%s); retrying", describe_error(exc))
                    await asyncio.sleep(min(0.1 * 2**failures, 2.0))
                    continue
                # Every worker hears every admission. One that was notified but
                # found nothing lost the race to another worker: it waits a
                # little longer before the next claim (up to _MAX_BACKOFF), so
                # busy workers are not slowed down by a herd of empty claims.
                if claimed:
                    backoff = 0.0
                elif notified:
                    backoff = min(max(backoff * 2, 0.001), _MAX_BACKOFF)
                self._start_all(qm, claimed)
                if claimed and len(claimed) == free:
                    continue  # there may be more admitted work than we took
            else:
                # Full: a finishing handler sets it again. Without clearing,
                # wait() on a set event would return at once and spin.
                self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.claim_interval):
                    await self._wake.wait()
            if backoff and not self._stopping:
                await asyncio.sleep(backoff)

    async def _claim(self, qm: QueueManager, free: int) -> list[Execution]:
        """``qm.claim``; a stop while it waits on the database gives it the grace period.

        A claim answers in milliseconds while the database does: it gets the
        grace period, at least _SETTLE_SECONDS (what it takes then runs under
        the grace period, or is handed back and listed), and a second stop
        ends the wait. Cut after that, it took nothing, or what it took stays
        active and owned by this executor, whose close (or reaping) abandons
        it; which ones cannot be known, so the log says so.
        """
        claim = asyncio.ensure_future(qm.claim(self.actions, free))
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not claim.done():
                await self._wait_unless_forced({claim}, max(self.grace, _SETTLE_SECONDS))
            if not claim.done():
                logger.warning(
                    "stopping: cancelling a claim the database has not answered; what it "
                    "took, if anything, is abandoned when this executor closes or is reaped"
                )
                claim.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await claim
                return []
            return claim.result()
        finally:
            stop.cancel()
            if not claim.done():  # run() itself was cancelled
                claim.cancel()

    async def _wait_unless_forced(
        self, tasks: Collection[asyncio.Future[Any]], timeout: float
    ) -> None:
        """Wait until one of ``tasks`` is done, ``timeout`` passes or a second stop comes."""
        if self._force.is_set():
            return
        force = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait(
                {*tasks, force}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            force.cancel()

    def _start_all(self, qm: QueueManager, claimed: list[Execution]) -> None:
        # Start each queue's executions in seq order: the claim's UPDATE ...
        # RETURNING does not promise an order. (seq is per queue; sorting by
        # it across queues keeps every queue's own order.)
        for execution in sorted(claimed, key=lambda e: e.seq):
            self._start(qm, execution)

    def _start(self, qm: QueueManager, execution: Execution) -> None:
        if execution.id in self._running or execution.id in self._finished_ids:
            # Adopted already: a completion's answer that arrived after adopt
            # listed what it claimed (and the handler may even have finished).
            return
        running = _Running(execution, self.app[execution.action])
        # Tasks start in creation order, so handlers start in claim (seq) order.
        task = asyncio.create_task(self._execute(running), name=f"fifoq-exec-{execution.id}")
        running.task = task
        self._running[execution.id] = running
        task.add_done_callback(lambda _: self._finished(running))

        def on_status(status: Status, _at: datetime | None) -> None:
            if status in (Status.CANCELLED, Status.ABANDONED) and running.stop_reason is None:
                if running.completing:
                    return  # complete() will say it is no longer active
                running.stop_reason = str(status)
                task.cancel()

        running.unsubscribe = qm.watch_status(execution.id, on_status)
        logger.debug(
            "execution %s (%s, group %s, seq %s) claimed",
            execution.id,
            execution.action,
            execution.group or "-",
            execution.seq,
        )

    def _finished(self, running: _Running) -> None:
        execution = running.execution
        self._running.pop(execution.id, None)
        self._finished_ids[execution.id] = None
        if len(self._finished_ids) > _FINISHED_KEPT:
            del self._finished_ids[next(iter(self._finished_ids))]
        if running.unsubscribe is not None:
            running.unsubscribe()
        self._wake.set()  # a slot of ours is free: claim again
        if running.stop_reason in ("cancelled", "abandoned"):
            logger.info(
                "execution %s (%s) was %s while running: handler stopped after %.3f s",
                execution.id,
                execution.action,
                running.stop_reason,
                time.monotonic() - running.started,
            )
        elif running.stop_reason == "unconfirmed":
            self.unconfirmed.append(execution.id)
        elif (
            running.stop_reason == "shutdown"
            and not running.recorded
            and execution.id not in self.handed_back  # a stuck one, listed already
        ):
            self.handed_back.append(execution.id)
        assert running.task is not None
        if not running.task.cancelled() and running.task.exception() is not None:
            logger.error(
                "execution %s (%s): worker error",
                execution.id,
                execution.action,
                exc_info=running.task.exception(),
            )

    # -- running -----------------------------------------------------------

    async def _execute(self, running: _Running) -> None:
        execution, spec = running.execution, running.spec
        _current.set(execution)  # this task's own context: seen by this handler only
        result: Any = None
        error: str | None = None
        try:
            async with asyncio.timeout(spec.timeout) as deadline:
                result = await spec.handler(execution.payload)
            if deadline.expired():  # it swallowed the cancellation and returned late
                result, error = None, _timed_out(spec)
        except TimeoutError as exc:
            error = _timed_out(spec) if deadline.expired() else describe_error(exc)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this worker stopped it: cancelled, abandoned or shutting down
            # The handler's own (it awaited a future someone else cancelled):
            # an outcome like any exception, or its slot would never be freed.
            error = describe_error(exc)
        except Exception as exc:
            error = describe_error(exc)
            logger.debug("handler of execution %s raised", execution.id, exc_info=True)
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt or a BaseException of the
            # handler's own: this execution fails like any other. Leaving the
            # task would take the whole worker down without its grace period
            # (or, for a custom one, leave the execution active for good).
            error = describe_error(exc)
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                logger.warning(
                    "handler of execution %s raised %s: stopping this worker as on SIGTERM",
                    execution.id,
                    type(exc).__name__,
                )
                self.stop()
        running.completing = True
        await self._complete(running, result, error)

    async def _complete(self, running: _Running, result: Any, error: str | None) -> None:
        # Outcomes of handlers that finish together share one statement.
        assert self._completions is not None
        complete = self._completions.complete
        execution = running.execution
        elapsed = time.monotonic() - running.started
        keep = elapsed < self.keep_slot_under
        queue = (execution.action, execution.group)  # its statement never waits for others'
        for attempt in range(1, _COMPLETE_ATTEMPTS + 1):
            try:
                try:
                    done = await complete(
                        Outcome(execution.id, result, error), keep_slot=keep, queue=queue
                    )
                except InvalidInput as exc:
                    # The result (not JSON, too large) or the error text cannot
                    # be stored: fail it, saying why.
                    what = "result" if error is None else "error text"
                    error = describe_error(
                        InvalidInput(f"the handler's {what} was not stored: {exc}")
                    )
                    result = None
                    done = await complete(
                        Outcome(execution.id, error=error), keep_slot=keep, queue=queue
                    )
            except InvalidTransition as exc:
                logger.info(
                    "execution %s (%s) finished after %.3f s but was no longer active: %s",
                    execution.id,
                    execution.action,
                    elapsed,
                    exc,
                )
                return
            except FifoqError as exc:
                # The executor closed under it (a handler that outlived the
                # shutdown): the execution was handed back and abandoned.
                logger.warning(
                    "outcome of execution %s (%s) not recorded after %.3f s: %s",
                    execution.id,
                    execution.action,
                    elapsed,
                    exc,
                )
                return
            except (psycopg.OperationalError, OSError) as exc:
                if attempt == _COMPLETE_ATTEMPTS:
                    logger.error(
                        "could not record the outcome of execution %s (%s): %s; it stays "
                        "active until this executor closes or is reaped, then it is abandoned",
                        execution.id,
                        execution.action,
                        describe_error(exc),
                    )
                    return
                await asyncio.sleep(0.2 * attempt)
                continue
            self.completed += 1
            running.recorded = True
            if done.status is Status.FAILED:
                logger.info(
                    "execution %s (%s) failed after %.3f s: %s",
                    execution.id,
                    execution.action,
                    elapsed,
                    error,
                )
            else:
                logger.debug(
                    "execution %s (%s) succeeded after %.3f s",
                    execution.id,
                    execution.action,
                    elapsed,
                )
            return

    def _cancel_handlers(self, *, completing_too: bool) -> None:
        """Cancel the running handler tasks for the shutdown (their executions are handed back)."""
        for running in list(self._running.values()):
            if running.completing and not completing_too:
                continue
            if running.stop_reason is None:
                running.stop_reason = "shutdown"
            assert running.task is not None
            running.task.cancel()

    async def _drain(self) -> None:
        """Let running handlers finish within the grace period; cancel the rest."""
        # A completion statement sent before stop() may still bring work
        # (its freed slots' executions, see CompletionBatcher): wait for it,
        # so that what it brings runs within the grace period like the rest.
        # Statements sent after stop() take nothing (claiming() is false).
        # It answers in milliseconds while the database does (or once a busy
        # queue's lock is free): it gets the grace period, at least
        # _SETTLE_SECONDS, and a second stop ends the wait. One that has not
        # answered by then (a database that does not) is cut below.
        assert self._completions is not None
        senders = self._completions.senders
        if senders:
            logger.debug("stopping: waiting for the completion statements in flight")
            await self._wait_unless_forced(senders, max(self.grace, _SETTLE_SECONDS))
        if not self._running:
            return
        logger.info(
            "waiting up to %g s for %d running handler(s) to finish", self.grace, len(self._running)
        )
        deadline = time.monotonic() + self.grace
        while self._running and not self._force.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tasks = {r.task for r in self._running.values() if r.task is not None}
            await self._wait_unless_forced(tasks, remaining)
        self._cancel_handlers(completing_too=False)  # an outcome being written may finish
        rest = {r.task for r in self._running.values() if r.task is not None}
        if rest:
            _, still = await asyncio.wait(rest, timeout=_SETTLE_SECONDS)
            # Still running now: handlers unwinding, outcomes stuck on a
            # database that does not answer, and work that a late statement
            # brought meanwhile. Cut the statement in flight and cancel them
            # all; their executions are handed back.
            still = {r.task for r in self._running.values() if r.task and not r.task.done()}
            if still:
                for running in self._running.values():
                    if running.completing and not running.recorded:
                        running.stop_reason = "unconfirmed"  # sent, maybe committed
                self._completions.cancel()
                self._cancel_handlers(completing_too=True)
                _, still = await asyncio.wait(still, timeout=_SETTLE_SECONDS)
            # Handlers that swallow every cancellation: nothing can stop a
            # task, so they are handed back (closing the executor abandons
            # their executions) and left behind; `fifoq worker` then exits
            # without waiting for them.
            for running in list(self._running.values()):
                if running.task in still:
                    self.stuck.append(running.execution.id)
                    if (
                        not running.recorded
                        and running.stop_reason != "unconfirmed"
                        and running.execution.id not in self.handed_back
                    ):
                        self.handed_back.append(running.execution.id)
            if self.stuck:
                logger.error(
                    "handler(s) of execution(s) %s ignore cancellation; they are handed back "
                    "and left running",
                    ", ".join(map(str, self.stuck)),
                )
