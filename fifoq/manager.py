"""QueueManager: the asyncio API of fifoq, one connected executor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import json
import logging
import math
import os
import re
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from .errors import (
    ExecutionAbandoned,
    ExecutionCancelled,
    ExecutorGone,
    FifoqError,
    InvalidInput,
    InvalidTransition,
    OutcomeUnknown,
    QueueTimeout,
    UnknownExecution,
)
from .listener import Listener
from .lost_replies import find_completed, find_request, tokens
from .models import Execution, Outcome, Policy, Purged, QueueStats, Status
from .queries import query
from .statements import (
    Change,
    KeptConnection,
    Statements,
    array_literal,
    being_cancelled,
    changed_rows,
)
from .validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_BATCH,
    as_list,
    check_action,
    check_batch_size,
    check_error_text,
    check_execution_id,
    check_group,
    check_limit,
    check_policy,
    check_timeout,
    to_json,
)

__all__ = ["QueueManager"]

logger = logging.getLogger("fifoq")

StatusCallback = Callable[[Status, datetime | None], None]
_T = TypeVar("_T")

_counter = itertools.count(1)


# fifoq.complete's and fifoq.complete_many's refusal (sql/0010_set_based_admission.sql).
_NOT_ACTIVE = re.compile(
    r"cannot complete execution (?P<id>\d+): it is (?P<status>\w+), not active"
)
_EARLY_LIMIT = 4096  # notifications kept for executions not watched yet
# Seconds close() waits in all for statements that do not come back (a
# database that does not answer): one deadline shared by its steps, so a
# silent server costs a closing executor this long, not this long per step.
_CLOSE_TIMEOUT = 5.0
_POOL_CLOSE_FLOOR = 0.5
# How long a waiter whose timeout ran out waits for the statement that times
# its execution out (normally a millisecond; a queue another transaction
# holds makes it wait for that transaction).
_GIVE_UP_WAIT = 1.0


class QueueManager:
    """One connected executor: enqueue, wait, complete, cancel and inspect executions.

    Create it with :meth:`connect`. It holds a connection pool for operations
    (one statement, one round trip each) and one dedicated connection that
    LISTENs for its executions, heartbeats its lease and re-checks what it
    waits on, so a lost notification only delays a waiter.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        own_pool: bool,
        name: str | None = None,
        lease: float = 5.0,
        poll_interval: float = 0.5,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        register_executor: bool = True,
    ) -> None:
        if not lease > 0:
            raise ValueError(f"lease must be positive, got {lease!r}")
        if not 0 < poll_interval <= lease / 2:
            raise ValueError(
                f"poll_interval must be positive and at most lease / 2, got {poll_interval!r}"
            )
        self._pool = pool
        self._db = Statements(pool)
        self._own_pool = own_pool
        # A worker's claims and completions come one after another: they run
        # on a connection of their own rather than a pooled one each time.
        # Only beside fifoq's own pool: a caller's pool may configure its
        # connections in ways fifoq cannot repeat.
        self._kept = KeptConnection(self._connect_kept) if own_pool else None
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{next(_counter)}"
        self.lease = lease
        self.poll_interval = poll_interval
        self.max_payload_bytes = max_payload_bytes
        self.register_executor = register_executor
        self.executor_id: int = 0
        self._listener: Listener | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._callbacks: dict[int, list[StatusCallback]] = {}
        self._early: OrderedDict[int, tuple[Status, datetime | None]] = OrderedDict()
        # Cancels of executions whose waiter was cancelled, still running.
        self._cleanups: set[asyncio.Task[None]] = set()
        self._rejoining = asyncio.Lock()  # see _rejoin
        self._closed = True
        # Claims (claim, complete_and_claim) whose answer was lost after they
        # may have committed: what they took is active and owned by this
        # executor, but the caller never heard of it (see adopt).
        self.claims_in_doubt = 0
        self._on_claims_in_doubt: list[Callable[[], None]] = []

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        conninfo: str = "",
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        name: str | None = None,
        lease: float = 5.0,
        poll_interval: float = 0.5,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        min_size: int = 1,
        max_size: int = 10,
        register_executor: bool = True,
    ) -> AsyncIterator[QueueManager]:
        """Connect an executor; the connection pool and executor are closed on exit.

        An empty ``conninfo`` uses the libpq ``PG*`` environment variables. With
        ``pool`` the given psycopg-pool ``AsyncConnectionPool`` is used (and not
        closed); its conninfo also serves the LISTEN connection.

        ``register_executor=False`` connects a plain client: no executor row,
        no LISTEN connection, no heartbeat or maintenance. It can read, set
        policies, enqueue, complete, cancel and purge; the calls that wait for
        or own executions (``enqueue_and_wait``, ``wait_started``, ``claim``,
        ``complete_and_claim``) raise ``FifoqError``. The CLI's one-shot
        commands use it, so they leave nothing behind in ``fifoq.executors``.
        """
        own_pool = pool is None
        if pool is None:
            pool = AsyncConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True},
                open=False,
                name=f"fifoq-{name or 'pool'}",
            )
        qm = cls(
            pool,
            own_pool=own_pool,
            name=name,
            lease=lease,
            poll_interval=poll_interval,
            max_payload_bytes=max_payload_bytes,
            register_executor=register_executor,
        )
        await qm.open()
        try:
            yield qm
        finally:
            await qm.close()

    async def open(self) -> None:
        """Open the pool, register this executor and start its listener."""
        if self._own_pool:
            # One direct connection first: an unreachable server or a bad
            # password fails at once with libpq's message, not after the
            # pool's 30 s wait.
            conninfo, kwargs = await self._pool_params()
            probe = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
            await probe.close()
            await self._pool.open(wait=True)
        if not self.register_executor:
            self._closed = False
            return
        try:
            self.executor_id = await self._register()
            conninfo, kwargs = await self._pool_params()
            self._listener = Listener(
                conninfo,
                kwargs,
                executor_id=self.executor_id,
                heartbeat_interval=self.poll_interval,
                heartbeat_timeout=max(self.lease / 2, self.poll_interval),
                watched=self._callbacks.keys,
                on_status=self._on_status,
                on_gone=self._rejoin,
            )
            await self._listener.start()
        except BaseException:
            if self._own_pool:
                await self._pool.close()
            raise
        self._closed = False
        self._maintenance = asyncio.create_task(self._maintain_forever(), name="fifoq-maintenance")
        logger.info("executor %s (%s) connected", self.executor_id, self.name)

    async def _pool_params(self) -> tuple[str, dict[str, Any]]:
        # The pool's own connection parameters, for the connections fifoq
        # opens beside it: the probe, the LISTEN connection, the kept one.
        conninfo: Any = self._pool.conninfo
        kwargs: Any = self._pool.kwargs
        if callable(conninfo):
            conninfo = conninfo()
        if callable(kwargs):
            kwargs = kwargs()
        if inspect.isawaitable(conninfo):
            conninfo = await conninfo
        if inspect.isawaitable(kwargs):
            kwargs = await kwargs
        return str(conninfo), {k: v for k, v in (kwargs or {}).items() if k != "autocommit"}

    async def _connect_kept(self) -> psycopg.AsyncConnection[Any]:
        conninfo, kwargs = await self._pool_params()
        return await psycopg.AsyncConnection.connect(conninfo, **kwargs, autocommit=True)

    async def close(self) -> None:
        """Stop listening, end this executor (what it still owns is abandoned), close the pool.

        Bounded: when the database does not answer, close gives up waiting
        for it after ``_CLOSE_TIMEOUT`` seconds in all (the others then reap
        this executor when its lease runs out).
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_TIMEOUT

        def left() -> float:
            return max(0.0, deadline - loop.time())

        # Cancels that cancelled waiters left running finish first: they are
        # short, and unregistering would abandon those executions anyway.
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=left())
        if self.register_executor:
            await self._end_executor(left)
        if self._kept is not None:
            await self._kept.close()
        if self._own_pool:
            # Closing sockets takes no answer from the server: a moment for
            # the pool's own tasks to end, even when the deadline has passed.
            await self._pool.close(timeout=max(left(), _POOL_CLOSE_FLOOR))

    async def _end_executor(self, left: Callable[[], float]) -> None:
        # Let the maintenance pass finish its statement rather than cancel it
        # mid-query (a cancelled query can leave its pooled connection broken).
        self._stop.set()
        if self._maintenance is not None:
            done, _ = await asyncio.wait({self._maintenance}, timeout=left())
            if not done:
                self._maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._maintenance
        if self._listener is not None:
            await self._listener.stop(timeout=left())
        try:
            async with asyncio.timeout(left()):
                await self._db.one(query("unregister_executor"), {"executor": self.executor_id})
        except (psycopg.Error, FifoqError, TimeoutError) as exc:
            # The others reap it when its lease runs out.
            logger.warning("could not unregister executor %s: %r", self.executor_id, exc)
        for execution_id in list(self._callbacks):
            self._on_status(execution_id, Status.ABANDONED, None)
        logger.info("executor %s (%s) closed", self.executor_id, self.name)

    @property
    def listener_backend_pid(self) -> int | None:
        """Server pid of the LISTEN connection (to inspect it in pg_stat_activity)."""
        return self._listener.backend_pid if self._listener is not None else None

    # -- executions --------------------------------------------------------

    async def enqueue(
        self,
        action: str,
        payload: Any = None,
        *,
        group: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Execution:
        """Add an execution to the queue of its action (and group).

        Returns it ``queued``, or ``active`` if it was admitted at once. Raises
        ``QueueFull`` or ``PolicyRejected``, storing nothing. With ``conn`` (an
        open connection inside a transaction) the enqueue joins that
        transaction; it holds the queue's lock until that transaction ends, so
        keep it short. It runs under a savepoint there: a refusal undoes only
        the enqueue, and the transaction can go on.
        """
        return await self._enqueue(action, payload, group=group, owner=None, conn=conn)

    async def enqueue_many(
        self,
        action: str,
        payloads: Iterable[Any],
        *,
        group: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[Execution]:
        """Enqueue one execution per payload, in one statement: all of them or none.

        The same as :meth:`enqueue` for each payload in turn -- each queue's
        share gets consecutive seq numbers in input order, and what starts at
        once is what single enqueues would start -- for one round trip, one
        queue lock and one commit. Raises ``QueueFull`` when the waiting part
        does not fit, ``PolicyRejected`` (``on_limit="reject"``) when any one
        could not start at once; nothing is stored then. At most 10,000
        payloads per call. Returns the executions in the order of
        ``payloads``. ``conn`` works as for :meth:`enqueue`.
        """
        check_action(action)
        values = as_list(payloads, what="payloads", item="payloads")
        check_batch_size(len(values), what="payloads")
        texts = [
            to_json(p, what=f"payload {i} for action {action!r}", limit=self.max_payload_bytes)
            for i, p in enumerate(values)
        ]
        params = {
            "action": action,
            "payloads": array_literal(texts),
            "group": check_group(group),
            "owner": None,
        }
        if not values:
            return []
        if conn is not None:
            rows = await self._db.rows(query("enqueue_many"), params, conn=conn)
        else:
            request = next(tokens)
            rows = await self._db.rows(
                query("enqueue_many_deferred"),
                {**params, "request": request},
                changed=changed_rows,
                reconcile=find_request(request),
            )
        return [
            dataclasses.replace(Execution.from_row(row), payload=_stored(text))
            for row, text in zip(rows, texts, strict=True)
        ]

    async def enqueue_and_wait(
        self,
        action: str,
        payload: Any = None,
        *,
        group: str | None = None,
        timeout: float | None = None,
    ) -> Execution:
        """Enqueue an execution owned by this executor and wait until it is active."""
        self._check_executor()
        timeout = check_timeout(timeout)
        deadline = _deadline(timeout)
        execution = await self._owned(
            self._as_executor(
                lambda executor_id: self._enqueue(action, payload, group=group, owner=executor_id)
            ),
            deadline,
            f"an execution of action {action!r} did not start within {timeout} s",
        )
        if execution.status is Status.ACTIVE:
            return execution
        return await self._wait(execution, timeout, deadline)

    async def wait_started(self, execution_id: int, *, timeout: float | None = None) -> Execution:
        """Wait until the execution is active; this executor becomes its owner.

        Raises ``QueueTimeout`` after ``timeout`` seconds (the execution is then
        marked ``timed_out`` unless it started meanwhile), ``ExecutionCancelled``
        or ``ExecutionAbandoned``.
        """
        self._check_executor()
        execution_id = check_execution_id(execution_id)
        timeout = check_timeout(timeout)
        # A notification that arrives between this call and the subscription
        # in _wait is kept in self._early, so it cannot be missed.
        deadline = _deadline(timeout)
        execution = await self._owned(
            self._as_executor(lambda executor_id: self._watch(execution_id, executor_id)),
            deadline,
            f"execution {execution_id} did not start within {timeout} s",
        )
        return await self._wait(execution, timeout, deadline)

    async def complete(
        self, execution_id: int, *, result: Any = None, error: str | None = None
    ) -> Execution:
        """Finish an active execution: ``succeeded``, or ``failed`` when ``error`` is given.

        Frees its slot and admits the next in line in the same transaction.
        Raises ``InvalidTransition`` unless it is active, ``UnknownExecution``.
        """
        execution_id = check_execution_id(execution_id)
        result_json = to_json(result, what="result", limit=self.max_payload_bytes)
        error = check_error_text(error)
        try:
            rows = await self._db.rows(
                query("complete"),
                {"id": execution_id, "result": result_json, "error": error},
                changed=changed_rows,
                reconcile=find_completed([execution_id], [result_json], [error]),
            )
        except InvalidTransition as exc:
            raise await self._naming_the_action(exc) from exc
        return Execution.from_row(rows[0])

    async def complete_many(self, outcomes: Iterable[Outcome]) -> list[Execution]:
        """Finish many active executions in one statement: all of them or none.

        Each :class:`Outcome` is ``succeeded`` with its result, or ``failed``
        when it has an error; freed slots go to the next in line in the same
        transaction, as with :meth:`complete`. Raises ``InvalidTransition``
        when any one is not active and ``UnknownExecution`` for an unknown id,
        changing nothing; an id given twice is ``InvalidInput``. At most 10,000
        per call. Returns the executions in the order given.
        """
        try:
            completed, _ = await self._complete_many(
                as_list(outcomes, what="outcomes", item="fifoq.Outcome items"),
                claimer=None,
                claim_actions=None,
                claim_limit=0,
            )
        except InvalidTransition as exc:
            raise await self._naming_the_action(exc) from exc
        return completed

    async def _naming_the_action(self, refusal: InvalidTransition) -> InvalidTransition:
        """The database's "cannot complete execution N" refusal, naming N's action too.

        SPEC §4: messages name the action. The SQL functions name only the
        id, and restating them to say more would copy two long functions
        into a migration; on this error path one more read costs nothing
        that matters. Anything else, or a failed read, is left as it was.
        """
        found = _NOT_ACTIVE.fullmatch(str(refusal))
        if found is None:
            return refusal
        try:
            execution = await self.get(int(found["id"]))
        except (FifoqError, psycopg.Error):
            return refusal
        return InvalidTransition(
            f"cannot complete execution {execution.id} of action {execution.action!r}: "
            f"it is {found['status']}, not active"
        )

    async def complete_and_claim(
        self, outcomes: Iterable[Outcome], actions: Sequence[str] | None, limit: int
    ) -> tuple[list[Execution], list[Execution]]:
        """Worker use: :meth:`complete_many`, and take what the freed slots admit.

        Up to ``limit`` of the executions that this completion admits and
        nobody owns (bare enqueues of ``actions``; None: any) become this
        executor's in the same transaction, as :meth:`claim` would make them,
        and nobody else is woken for them. Returns (completed, claimed), the
        claimed in seq order.
        """
        self._check_executor()
        # Read once: _as_executor may run the statement twice (after a rejoin).
        items = as_list(outcomes, what="outcomes", item="fifoq.Outcome items")
        claim_actions = None if actions is None else list(actions)
        return await self._as_executor(
            lambda executor_id: self._complete_many(
                items, claimer=executor_id, claim_actions=claim_actions, claim_limit=limit
            )
        )

    async def _complete_many(
        self,
        items: list[Outcome],
        *,
        claimer: int | None,
        claim_actions: list[str] | None,
        claim_limit: int,
    ) -> tuple[list[Execution], list[Execution]]:
        check_batch_size(len(items), what="outcomes")
        ids: list[int] = []
        results: list[str | None] = []
        errors: list[str | None] = []
        for item in items:
            if not isinstance(item, Outcome):
                raise InvalidInput(f"expected fifoq.Outcome items, got {type(item).__name__}")
            ids.append(check_execution_id(item.execution_id))
            results.append(
                to_json(
                    item.result,
                    what=f"result of execution {item.execution_id}",
                    limit=self.max_payload_bytes,
                )
            )
            errors.append(check_error_text(item.error))
        seen: set[int] = set()
        for execution_id in ids:
            if execution_id in seen:
                raise InvalidInput(f"execution {execution_id} appears more than once in the batch")
            seen.add(execution_id)
        if not items:
            return [], []
        claiming = claimer is not None and claim_limit > 0
        find = find_completed(ids, results, errors)

        async def reconcile(
            conn: psycopg.AsyncConnection[Any], elapsed: float
        ) -> list[dict[str, Any]] | None:
            found = await find(conn, elapsed)
            if found is not None and claiming:
                # It committed, and may have taken executions for the claimer.
                self._claims_lost()
            return found

        try:
            rows = await self._db.rows(
                query("complete_many"),
                {
                    "ids": array_literal(ids),
                    "results": array_literal(results),
                    "errors": array_literal(errors),
                    "claimer": claimer if claim_limit > 0 else None,
                    "actions": None if claim_actions is None else array_literal(claim_actions),
                    "limit": max(claim_limit, 0),
                },
                changed=changed_rows,
                kept=self._kept if claimer is not None else None,
                reconcile=reconcile,
            )
        except OutcomeUnknown:
            if claiming:
                self._claims_lost()  # it may have taken executions for the claimer
            raise
        executions = [Execution.from_row(row) for row in rows]
        return executions[: len(items)], executions[len(items) :]

    async def cancel(self, execution_id: int) -> bool:
        """Cancel a queued or active execution; False if it had already finished.

        A waiter on it raises ``ExecutionCancelled`` at once; an active one's
        slot goes to the next in line.
        """
        execution_id = check_execution_id(execution_id)

        async def reconcile(
            conn: psycopg.AsyncConnection[Any], elapsed: float
        ) -> list[dict[str, Any]] | None:
            # Cancelled: by the lost attempt (or someone else meanwhile; either
            # way it is cancelled, as asked). Otherwise cancel it now.
            cur = await conn.execute(query("status"), {"id": execution_id})
            found = await cur.fetchone()
            if found is not None and Status(found[0]) is Status.CANCELLED:
                return [{"cancelled": True}]
            return None

        rows = await self._db.rows(
            query("cancel"),
            {"id": execution_id},
            changed=lambda rows: (
                [Change(execution_id, Status.CANCELLED)] if rows[0]["cancelled"] else []
            ),
            reconcile=reconcile,
        )
        return bool(rows[0]["cancelled"])

    async def time_out(self, execution_id: int) -> Execution:
        """Give up on a waiting execution: mark it ``timed_out`` and return it.

        What ``wait_started`` does when its ``timeout`` runs out, for a caller
        that waits without owning the execution (``fifoq enqueue --wait
        --timeout``). An execution that is no longer queued (it started, or
        ended) is returned unchanged; ``UnknownExecution`` if there is none.
        """
        execution_id = check_execution_id(execution_id)
        return Execution.from_row(
            await self._db.change_one(query("time_out"), {"id": execution_id})
        )

    async def get(self, execution_id: int) -> Execution:
        """The execution with this id; ``UnknownExecution`` if there is none."""
        execution_id = check_execution_id(execution_id)
        row = await self._db.optional(query("get"), {"id": execution_id})
        if row is None:
            raise UnknownExecution(f"unknown execution {execution_id}")
        return Execution.from_row(row)

    async def list_executions(
        self, action: str, *, group: str | None = None, limit: int = 100
    ) -> list[Execution]:
        """The live executions of an action: active ones, then the waiting line in start order.

        All of the action's groups (ordered by group), or only ``group``.
        At most ``limit`` rows (1 to 10,000). A plain read: finished
        executions are not listed (``get`` shows one).
        """
        check_action(action)
        group_key = None if group is None else check_group(group) or ""
        limit = check_limit(limit, maximum=MAX_BATCH)
        rows = await self._db.rows(
            query("list_executions"), {"action": action, "group": group_key, "limit": limit}
        )
        return [Execution.from_row(r) for r in rows]

    async def claim(self, actions: Sequence[str] | None, limit: int) -> list[Execution]:
        """Take up to ``limit`` admitted executions nobody owns (worker use), in seq order.

        ``actions`` None takes any action's; an empty list takes nothing.
        """
        self._check_executor()
        # Array text, as complete_many sends its actions (see array_literal).
        params = {
            "actions": None if actions is None else array_literal(list(actions)),
            "limit": limit,
        }
        try:
            rows = await self._as_executor(
                lambda executor_id: self._db.rows(
                    query("claim"),
                    {**params, "executor": executor_id},
                    changed=changed_rows,
                    kept=self._kept,
                    reconcile=self._claim_lost,
                )
            )
        except OutcomeUnknown:
            self._claims_lost()  # it may have taken executions: adopt them
            raise
        return [Execution.from_row(r) for r in rows]

    async def _claim_lost(
        self, conn: psycopg.AsyncConnection[Any], elapsed: float
    ) -> list[dict[str, Any]]:
        # What a lost claim took cannot be told apart from what the caller
        # already runs (both are active and this executor's), so it is not
        # returned here, nor claimed again: the caller adopts it (adopt).
        self._claims_lost()
        return []

    def _claims_lost(self) -> None:
        self.claims_in_doubt += 1
        logger.warning(
            "executor %s: a claim's answer was lost after it may have committed; "
            "what it took is to be adopted",
            self.executor_id,
        )
        for callback in list(self._on_claims_in_doubt):
            callback()

    def on_claims_in_doubt(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever :attr:`claims_in_doubt` grows (workers: adopt then)."""
        self._on_claims_in_doubt.append(callback)

    async def adopt(self, actions: Sequence[str] | None, known: Iterable[int]) -> list[Execution]:
        """This executor's active executions of ``actions`` (None: any) not in ``known``, by seq.

        Worker use, after :attr:`claims_in_doubt` grew: a claim whose answer
        was lost (the connection dropped with no SQLSTATE after it committed)
        made executions this executor's that its caller never heard of. They
        hold slots until the executor closes unless someone runs them:
        ``known`` is what the caller runs (and anything else it holds of
        this executor's), the rest is returned for it to run. Call it with
        no claim in flight from the same caller: an answer still on its way
        would list its executions here too.
        """
        self._check_executor()
        rows = await self._db.rows(
            query("adopt"),
            {
                "executor": self.executor_id,
                "actions": None if actions is None else array_literal(list(actions)),
                "known": array_literal(list(known)),
            },
        )
        return [Execution.from_row(r) for r in rows]

    def watch_status(self, execution_id: int, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(status, at)`` when an owned execution changes; returns unsubscribe."""
        self._callbacks.setdefault(execution_id, []).append(callback)
        early = self._early.pop(execution_id, None)
        if early is not None:
            callback(*early)

        def unsubscribe() -> None:
            callbacks = self._callbacks.get(execution_id)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._callbacks[execution_id]

        return unsubscribe

    def listen_for_work(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(action)`` whenever an execution nobody owns is admitted (workers)."""
        self._check_executor()
        assert self._listener is not None
        self._listener.listen_for_work(callback)

    # -- policies ----------------------------------------------------------

    async def set_policy(
        self,
        action: str,
        *,
        max_concurrent: int,
        max_queue_length: int = 10_000,
        queue_timeout: float | None = 3600.0,
        on_limit: str = "enqueue",
        group_by: Sequence[str] = (),
    ) -> Policy:
        """Set the policy of an action, of a pack (``"pack.*"``) or the default (``"*"``).

        Raises ``InvalidPolicy`` (a ``ValueError``) on bad values. A raised
        limit admits waiting executions at once.
        """
        name, limit, length, timeout, mode, keys = check_policy(
            action,
            max_concurrent=max_concurrent,
            max_queue_length=max_queue_length,
            queue_timeout=queue_timeout,
            on_limit=on_limit,
            group_by=group_by,
        )
        row = await self._db.one(
            query("set_policy"),
            {
                "action": name,
                "max_concurrent": limit,
                "max_queue_length": length,
                "queue_timeout": timeout,
                "on_limit": mode,
                "group_by": keys,
            },
        )
        return Policy.from_row(row)

    async def set_default_policy(
        self,
        *,
        max_concurrent: int,
        max_queue_length: int = 10_000,
        queue_timeout: float | None = 3600.0,
        on_limit: str = "enqueue",
        group_by: Sequence[str] = (),
    ) -> Policy:
        """Set the policy of every action that has neither its own nor its pack's."""
        return await self.set_policy(
            "*",
            max_concurrent=max_concurrent,
            max_queue_length=max_queue_length,
            queue_timeout=queue_timeout,
            on_limit=on_limit,
            group_by=group_by,
        )

    async def delete_policy(self, action: str) -> Policy | None:
        """Remove the policy of an action, a pack (``"pack.*"``) or the default (``"*"``).

        Returns the removed policy, or None when none was set (nothing
        changes then). The queues it governed fall back to the next policy
        in force (the pack's, the default, or unlimited); a limit that rises
        by it admits waiting executions at once. Needs DELETE on
        ``fifoq.policies``, which the role ``fifoq_executor`` lacks.
        """
        check_action(action)
        row = await self._db.optional(query("delete_policy"), {"action": action})
        return Policy.from_row(row) if row else None

    async def get_policy(self, action: str) -> Policy:
        """The policy in force for an action: its own, its pack's, the default, or unlimited."""
        check_action(action)
        row = await self._db.optional(query("get_policy"), {"action": action})
        return Policy.from_row(row) if row else Policy.unlimited()

    async def list_policies(self) -> list[Policy]:
        """Every policy set, ordered by action."""
        return [Policy.from_row(r) for r in await self._db.rows(query("list_policies"), {})]

    # -- statistics --------------------------------------------------------

    async def stats(self, action: str, *, group: str | None = None) -> QueueStats:
        """Live statistics of one queue (zeros for a queue never used)."""
        check_action(action)
        group_key = check_group(group) or ""
        row = await self._db.optional(
            query("stats_live_action"), {"action": action, "group": group_key}
        )
        if row is not None:
            return QueueStats.from_row(row)
        policy = await self.get_policy(action)
        return QueueStats(
            action=action,
            group=group_key or None,
            queue_length=0,
            active_count=0,
            max_concurrent=policy.max_concurrent,
            oldest_enqueued_at=None,
            total_enqueued=0,
            total_completed=0,
            total_failed=0,
            total_cancelled=0,
            total_timed_out=0,
            last_updated=datetime.now().astimezone(),
        )

    async def live_stats(
        self, action: str | None = None, *, group: str | None = None
    ) -> list[QueueStats]:
        """Live statistics of every queue, or of one action's queues, ordered by action and group.

        With ``action``: all of its groups, or only ``group`` (``""`` is the
        default group), as in :meth:`list_executions`; queues never used
        have no row. ``group`` without ``action`` is ``InvalidInput``.
        """
        if action is None:
            if group is not None:
                raise InvalidInput("live_stats: group needs an action")
            rows = await self._db.rows(query("stats_live_all"), {})
        else:
            check_action(action)
            group_key = None if group is None else check_group(group) or ""
            rows = await self._db.rows(
                query("stats_live_action"), {"action": action, "group": group_key}
            )
        return [QueueStats.from_row(r) for r in rows]

    async def refresh_stats(self) -> None:
        """Refresh the materialized view ``fifoq.queue_stats``.

        It is rebuilt (its readers wait the few milliseconds that takes), or,
        if a reader's open transaction holds it for more than 20 ms,
        refreshed ``CONCURRENTLY`` beside them: ``fifoq.refresh_stats(true)``
        in its own transaction (``sql/0023``).
        """
        await self._db.one(query("refresh_stats"), {})

    async def snapshot_stats(self) -> list[QueueStats]:
        """The rows of ``fifoq.queue_stats`` as of its last refresh, one per queue."""
        return [QueueStats.from_row(r) for r in await self._db.rows(query("snapshot_stats"), {})]

    # -- retention ---------------------------------------------------------

    async def purge(self, older_than: timedelta | float, *, limit: int = 10_000) -> Purged:
        """Delete up to ``limit`` executions that finished more than ``older_than`` ago.

        ``older_than`` is a ``timedelta`` or seconds. Oldest first; also ended
        executors older than that which own nothing live. Statistics keep
        their totals (they live in the queue counters). Call it again while
        it returns ``limit`` executions; ``fifoq purge`` does.
        """
        if not isinstance(older_than, timedelta):
            if isinstance(older_than, bool) or not isinstance(older_than, int | float):
                raise InvalidInput(
                    f"older_than must be a timedelta or seconds, got {type(older_than).__name__}"
                )
            if not math.isfinite(older_than):
                raise InvalidInput(f"older_than must be finite, got {older_than!r}")
            older_than = timedelta(seconds=older_than)
        if older_than < timedelta(0):
            raise InvalidInput(f"older_than must not be negative, got {older_than}")
        limit = check_limit(limit, maximum=2**31 - 1)
        row = await self._db.one(query("purge"), {"older_than": older_than, "limit": limit})
        return Purged(**row["purged"])

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FifoqError("this QueueManager is closed")

    def _check_executor(self) -> None:
        self._check_open()
        if not self.register_executor:
            raise FifoqError(
                "this QueueManager was connected with register_executor=False: it cannot wait "
                "for or own executions"
            )

    async def _enqueue(
        self,
        action: str,
        payload: Any,
        *,
        group: str | None,
        owner: int | None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Execution:
        check_action(action)
        payload_json = to_json(
            payload, what=f"payload for action {action!r}", limit=self.max_payload_bytes
        )
        params = {
            "action": action,
            "payload": payload_json,
            "group": check_group(group),
            "owner": owner,
        }
        # An admission notification that arrives before _wait subscribes is
        # kept in self._early and handed over on subscription.
        if conn is not None:
            row = await self._db.one(query("enqueue"), params, conn=conn)
        else:
            # The token finds the execution if the answer is lost (sql/0021):
            # running the enqueue again would store a second one.
            request = next(tokens)
            params["request"] = request
            rows = await self._db.rows(
                query("enqueue_deferred"),
                params,
                changed=changed_rows,
                reconcile=find_request(request),
            )
            row = rows[0]
        return dataclasses.replace(Execution.from_row(row), payload=_stored(payload_json))

    async def _wait(
        self, execution: Execution, timeout: float | None, deadline: float | None
    ) -> Execution:
        status = execution.status
        if status is Status.ACTIVE:
            return execution
        if status is not Status.QUEUED:
            raise self._not_started(execution, status)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Status, datetime | None]] = loop.create_future()

        def on_change(new_status: Status, at: datetime | None) -> None:
            if new_status is not Status.QUEUED and not future.done():
                future.set_result((new_status, at))

        unsubscribe = self.watch_status(execution.id, on_change)
        try:
            try:
                async with asyncio.timeout_at(deadline):  # the caller's, from its start
                    new_status, at = await future
            except TimeoutError:
                # Give up in the database too, unless it started meanwhile;
                # bounded like the statement that began the wait (_owned).
                latest = await self._owned(
                    self.time_out(execution.id),
                    asyncio.get_running_loop().time(),
                    f"execution {execution.id} of action {execution.action!r} did not start "
                    f"within {timeout} s",
                )
                if latest.status is Status.ACTIVE:
                    return dataclasses.replace(latest, payload=execution.payload)
                if latest.status is Status.TIMED_OUT:
                    raise QueueTimeout(
                        f"execution {execution.id} of action {execution.action!r} did not start "
                        f"within {timeout} s"
                    ) from None
                raise self._not_started(latest, latest.status) from None
            if new_status is Status.ACTIVE:
                if at is None:  # learned from the poll: read the start time
                    started = await self.get(execution.id)
                    if started.status is not Status.ACTIVE:
                        # Cancelled or finished by someone else since the
                        # poll saw it start: say so, as a notification would.
                        raise self._not_started(started, started.status)
                    return dataclasses.replace(started, payload=execution.payload)
                return dataclasses.replace(
                    execution, status=Status.ACTIVE, started_at=at, owner=self.executor_id
                )
        except asyncio.CancelledError:
            # The caller gave up (task cancelled) at any await above: do not
            # leave an owned execution behind to take a slot nobody will use.
            self._clean_up(self._cancel_quietly(execution.id))
            raise
        finally:
            unsubscribe()
        if at is None and new_status is Status.TIMED_OUT:
            # Learned from the poll, which carries no time: read when it
            # timed out, for the message (how long it waited).
            with contextlib.suppress(FifoqError, psycopg.Error):
                at = (await self.get(execution.id)).finished_at
        raise self._not_started(execution, new_status, at)

    async def _watch(self, execution_id: int, executor_id: int) -> Execution:
        row = await self._db.change_one(
            query("watch"), {"id": execution_id, "executor": executor_id}
        )
        return Execution.from_row(row)

    async def _as_executor(self, statement: Callable[[int], Awaitable[_T]]) -> _T:
        """Run ``statement(executor_id)``, a statement that names this executor.

        If the others reaped this executor (its lease ran out: a stalled
        process, a long pause of the event loop) before its listener noticed,
        the statement fails with ``ExecutorGone`` and changes nothing: carry
        on as a new executor, as the listener would, and run it again.
        """
        executor_id = self.executor_id
        try:
            return await statement(executor_id)
        except ExecutorGone:
            if self._closed:
                raise
            await self._rejoin(executor_id)
            return await statement(self.executor_id)

    async def _owned(
        self,
        statement: Coroutine[Any, Any, Execution],
        deadline: float | None = None,
        timed_out: str = "",
    ) -> Execution:
        """Await a statement that makes this executor an execution's owner.

        If the caller is cancelled meanwhile, it leaves at once; the statement
        still runs to its end (it may have committed already), and the
        execution it returns is then cancelled, in the background: otherwise
        it would hold, or later take, a slot for a waiter that has gone, until
        this executor closes. Likewise at the caller's ``deadline`` (loop
        time; at least _GIVE_UP_WAIT from now), which the statement passes
        only when another transaction holds the queue (a client's open
        enqueue(conn=...)): ``QueueTimeout`` with the message ``timed_out``,
        and the execution is timed out once the statement ends (cancelled
        if it started meanwhile).
        """
        task = asyncio.ensure_future(statement)
        if deadline is not None:
            # The statement itself always gets _GIVE_UP_WAIT: a short (or
            # zero) timeout bounds the wait for a slot, not the enqueue or
            # watch that may find one at once.
            deadline = max(deadline, asyncio.get_running_loop().time() + _GIVE_UP_WAIT)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            self._clean_up(self._give_up_when_done(task))
            raise QueueTimeout(
                f"{timed_out} (another transaction holds its queue: it is withdrawn once free)"
            ) from None
        except asyncio.CancelledError:
            self._clean_up(self._cancel_when_done(task))
            raise

    def _clean_up(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run ``cleanup`` in the background, so that a cancelled caller leaves at once.

        The statements it waits for may wait themselves (for a queue lock a
        client transaction holds), and a caller that gave up, say at the end
        of ``asyncio.wait_for``, must not wait for them. ``close`` waits.
        """
        task = asyncio.create_task(cleanup, name="fifoq-cancel-after-waiter-left")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _cancel_when_done(self, statement: asyncio.Future[Execution]) -> None:
        try:
            execution = await statement
        except Exception:  # it failed, so it owns nothing; the caller has gone
            return
        if not execution.status.terminal:
            await self._cancel_quietly(execution.id)

    async def _give_up_when_done(self, statement: asyncio.Future[Execution]) -> None:
        """Time out what ``statement`` made this executor wait for, its waiter having left."""
        try:
            execution = await statement
        except Exception:  # it failed, so it owns nothing; the caller has gone
            return
        if execution.status is Status.QUEUED:
            try:
                execution = await self.time_out(execution.id)
            except (psycopg.Error, FifoqError) as exc:
                logger.warning(
                    "could not time out execution %s after its waiter left: %s", execution.id, exc
                )
                return
        if not execution.status.terminal:  # it started meanwhile, for nobody
            await self._cancel_quietly(execution.id)

    async def _cancel_quietly(self, execution_id: int) -> None:
        try:
            await self.cancel(execution_id)
        except (psycopg.Error, FifoqError) as exc:
            logger.warning(
                "could not cancel execution %s after its waiter left: %s", execution_id, exc
            )

    @staticmethod
    def _not_started(
        execution: Execution, status: Status, at: datetime | None = None
    ) -> FifoqError:
        where = f"execution {execution.id} of action {execution.action!r}"
        if status is Status.CANCELLED:
            return ExecutionCancelled(f"{where} was cancelled")
        if status is Status.TIMED_OUT:
            # `at` (or finished_at): when the database timed it out.
            ended = at or execution.finished_at
            if ended is None:
                return QueueTimeout(f"{where} timed out waiting in its queue (queue_timeout)")
            waited = (ended - execution.enqueued_at).total_seconds()
            return QueueTimeout(
                f"{where} timed out after waiting {waited:.1f} s in its queue (queue_timeout)"
            )
        if status is Status.ABANDONED:
            return ExecutionAbandoned(f"{where} was abandoned: its executor is gone")
        return InvalidTransition(f"{where} already finished: it is {status}")

    def _on_status(self, execution_id: int, status: Status, at: datetime | None) -> None:
        callbacks = self._callbacks.get(execution_id)
        if not callbacks:
            # Kept for a waiter that subscribes a moment later (see _wait).
            # Only what a waiter can still learn: succeeded and failed come
            # after a start it already saw (a worker's own completions).
            if status not in (Status.QUEUED, Status.SUCCEEDED, Status.FAILED):
                self._early[execution_id] = (status, at)
                while len(self._early) > _EARLY_LIMIT:
                    self._early.popitem(last=False)
            return
        for callback in list(callbacks):
            try:
                callback(status, at)
            except Exception:
                logger.exception("status callback for execution %s failed", execution_id)

    async def _rejoin(self, gone_id: int) -> None:
        """Carry on as a new executor after the others reaped ``gone_id``.

        Whoever notices first does it -- the listener's heartbeat, or a call
        whose statement named the reaped id -- and only once: the others find
        ``executor_id`` changed. Everything ``gone_id`` owned is abandoned
        (its slots were given away), so its waiters are told, after the new
        id is in place: woken first, their next call would still carry the
        dead executor's id.
        """
        async with self._rejoining:
            if self.executor_id != gone_id or self._closed:
                return
            try:
                self.executor_id = await self._register()
                assert self._listener is not None
                self._listener.rebind(self.executor_id)
            finally:
                for execution_id in list(self._callbacks):
                    self._on_status(execution_id, Status.ABANDONED, None)
            logger.warning(
                "executor %s was reaped; continuing as executor %s", gone_id, self.executor_id
            )

    async def _register(self) -> int:
        row = await self._db.one(
            query("register_executor"),
            {
                "name": self.name,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "lease": self.lease,
            },
        )
        return int(row["id"])

    async def _maintain_forever(self) -> None:
        # Timeouts, reaping and repairs happen in the database; every executor
        # offers to run the pass and one at a time does (fifoq.maintain).
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self._db.one(query("maintain"), {})
            except Exception as exc:
                if being_cancelled():
                    raise asyncio.CancelledError from exc
                logger.debug("maintenance pass failed: %s", exc)


def _deadline(timeout: float | None) -> float | None:
    """The event loop's time at which ``timeout`` seconds from now run out (None: never)."""
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _stored(payload_json: str | None) -> Any:
    """The payload as the database holds it and ``get`` returns it, from the JSON text sent.

    The statements do not send payloads back; returning the caller's object
    instead would differ from ``get`` (a tuple for a list, int keys for
    text keys) and change when the caller mutates it later.
    """
    return None if payload_json is None else json.loads(payload_json)
