"""Runs fifoq's statements on a connection pool: durable, and retried when a connection is lost.

The state changes run in their deferred form (``fifoq.*_deferred``, see
``sql/0006_flush_outside_lock.sql``): the statement commits without waiting
for the disk, so the queue lock is not held through the flush, and
``CALL fifoq.flush_and_notify()`` follows on the same connection before the
caller hears of the change. This module is the one place that knows that
protocol, and what to do when the connection dies in the middle of it:

- lost before the statement committed: run it again on another connection;
- lost after it committed but before the flush: never run it again; flush
  from another connection and check that the change survived;
- lost with no SQLSTATE while the statement was in flight (a network drop,
  a reset from a proxy, a server gone): it may have committed, its answer
  lost. Its backend is ended, busy or idle (the statement may still be on
  its way to it), so that the outcome is settled, and the caller's
  ``reconcile`` looks in the database for what the statement did (see
  :meth:`Statements.rows`) before anything runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .errors import FifoqError, OutcomeUnknown, wrap_database_errors
from .models import Status
from .queries import query

__all__ = [
    "Change",
    "Changed",
    "KeptConnection",
    "Reconcile",
    "Statements",
    "array_literal",
    "being_cancelled",
    "changed_rows",
]

logger = logging.getLogger("fifoq")

# The server ended the session before the statement finished (so it did not
# commit): admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now.
_CONNECTION_ENDED = frozenset({"57P01", "57P02", "57P03"})
# How long a call goes on retrying on fresh pooled connections while the
# ones it gets were lost. Counted in time, not attempts: back-to-back server
# restarts (or a pool refilled just before a shutdown) can cost one call more
# dead connections than the pool holds.
LOST_CONNECTION_RETRY_SECONDS = 30.0
# After a kept connection could not be opened, how long its statements use
# the pool before it is tried again.
KEPT_RECONNECT_SECONDS = 1.0


def being_cancelled() -> bool:
    """True when the running task has a cancellation pending (never retry then)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """What a deferred statement did to one execution, as its answer reported it."""

    id: int
    status: Status
    owner: int | None = None

    def survives(self, found: tuple[Any, ...] | None) -> bool:
        """Whether the execution's (status, owner) as found now still includes this change.

        It may have moved on since (someone completed it), never back: a
        status earlier in its life than reported, or a live execution that
        lost the owner it was given, means the change itself was lost.
        """
        if found is None:
            return False
        status, owner = Status(found[0]), found[1]
        if _PROGRESS[status] < _PROGRESS[self.status]:
            return False
        return status.terminal or self.owner is None or owner == self.owner


# Maps a deferred statement's rows to the executions it changed (none:
# nothing to flush, e.g. a claim that found no work).
Changed = Callable[[list[dict[str, Any]]], list[Change]]

# After a connection was lost with no SQLSTATE while a state change was in
# flight: given a fresh connection (autocommit; the lost backend ended, and
# everything committed so far flushed) and the seconds since the call began,
# the rows the lost attempt returned if it committed, or None if it did not
# (it is then run again).
Reconcile = Callable[[psycopg.AsyncConnection[Any], float], Awaitable[list[dict[str, Any]] | None]]

# How far along its life a status is.
_PROGRESS = {
    status: 0 if status is Status.QUEUED else 1 if status is Status.ACTIVE else 2
    for status in Status
}


def changed_rows(rows: list[dict[str, Any]]) -> list[Change]:
    """What state changes that return execution rows did."""
    return [Change(row["id"], Status(row["status"]), row["owner"]) for row in rows]


def array_literal(values: Sequence[str | int | None]) -> str:
    """The text form of a one-dimensional array, for a parameter cast to an array type in SQL.

    psycopg adapts a list by inspecting its items and building an array
    dumper for them at every call, which costs a batch statement tens of
    microseconds of Python; a string is sent as it is. Every text element is
    double-quoted with ``\\`` and ``"`` escaped, so any text (braces, commas,
    quotes, spaces, ``NULL``) reads back unchanged; None is ``NULL``.
    """
    items: list[str] = []
    for value in values:
        if value is None:
            items.append("NULL")
        elif isinstance(value, int):
            items.append(str(value))
        else:
            items.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


class KeptConnection:
    """A connection kept for one caller's statements (a worker's completions and claims).

    Checking a connection out of the pool and back costs every statement
    some Python (its lock, its checks, the context managers); a caller that
    runs one statement after another can keep one instead. :meth:`take`
    gives it to one statement at a time: while it is in use, or not open,
    the statement uses the pool, as does every retry after a lost
    connection. It is opened in the background (autocommit, the pool's
    parameters) when a statement finds none, so no statement ever waits for
    a connection attempt (which could hang on an unreachable network until
    the TCP timeout): that statement uses the pool. A connection that comes
    back lost, or not idle (a statement cancelled in flight), is closed and
    opened again the same way.
    """

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]) -> None:
        self._connect = connect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._busy = False
        self._closed = False
        self._retry_at = 0.0

    async def take(self) -> psycopg.AsyncConnection[Any] | None:
        """The kept connection, now this caller's until :meth:`give_back`; None: use the pool."""
        if self._busy or self._closed:
            return None
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            if self._opening is None and time.monotonic() >= self._retry_at:
                self._opening = asyncio.create_task(self._open(), name="fifoq-kept-connection")
            return None
        self._busy = True
        return conn

    async def _open(self) -> None:
        try:
            conn = await self._connect()
        except (psycopg.Error, OSError) as exc:
            self._retry_at = time.monotonic() + KEPT_RECONNECT_SECONDS
            logger.info("could not open a kept connection (%s); using the pool", exc)
            return
        finally:
            self._opening = None
        if self._closed:
            await conn.close()
        else:
            self._conn = conn

    async def give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Return what :meth:`take` gave; closed if it is no longer fit for the next statement."""
        self._busy = False
        if self._closed or conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            if conn is self._conn:
                self._conn = None
            await conn.close()

    async def close(self) -> None:
        """Close the connection (one in use is closed when given back)."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        if self._conn is not None and not self._busy:
            conn, self._conn = self._conn, None
            await conn.close()

    @property
    def connection(self) -> psycopg.AsyncConnection[Any] | None:
        """The connection kept now, if one is open (for tests and inspection)."""
        conn = self._conn
        return conn if conn is not None and not conn.closed else None


class Statements:
    """One statement, one round trip (plus the flush after a change), on ``pool``.

    Database errors come out as fifoq's exceptions (``wrap_database_errors``).
    """

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def one(
        self,
        sql_text: LiteralString,
        params: dict[str, Any],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> dict[str, Any]:
        """The statement's first row; ``FifoqError`` if it returned none."""
        row = await self.optional(sql_text, params, conn=conn)
        if row is None:
            raise FifoqError("the database returned no row")
        return row

    async def optional(
        self,
        sql_text: LiteralString,
        params: dict[str, Any],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> dict[str, Any] | None:
        """The statement's first row, or None."""
        rows = await self.rows(sql_text, params, conn=conn)
        return rows[0] if rows else None

    async def change_one(self, sql_text: LiteralString, params: dict[str, Any]) -> dict[str, Any]:
        """Run a deferred state change returning one execution row (see :meth:`rows`)."""
        rows = await self.rows(sql_text, params, changed=changed_rows)
        if not rows:
            raise FifoqError("the database returned no row")
        return rows[0]

    async def rows(
        self,
        sql_text: LiteralString,
        params: dict[str, Any],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        changed: Changed | None = None,
        kept: KeptConnection | None = None,
        reconcile: Reconcile | None = None,
    ) -> list[dict[str, Any]]:
        """Run one statement and return its rows.

        With ``conn`` it runs there, inside the caller's transaction. Otherwise
        on a pooled connection in autocommit. A ``changed`` statement is a
        deferred state change (a ``fifoq.*_deferred`` function): its commit
        did not wait for the disk, so ``flush`` follows on the same connection
        and the rows are returned only once they are durable. ``changed`` maps
        the rows to the :class:`Change` of each execution the statement changed
        (none: nothing to flush, e.g. a claim that found no work), which are
        checked if the flush has to be redone elsewhere. With ``kept`` the
        first attempt runs on that connection when it is free (see
        :class:`KeptConnection`); retries use the pool.

        A connection lost with a SQLSTATE that says the session ended
        (57P01-57P03) ended before the statement committed: it runs again. One
        lost with none (a network drop or reset, a backend killed) is
        ambiguous for a ``changed`` statement: the server may have committed
        it and the answer been lost. Then, on another connection, the lost
        backend is ended, busy or idle (OutcomeUnknown if it does not exit;
        see :meth:`_settle`), everything committed so far is flushed, and
        ``reconcile`` tells what the lost attempt did: its rows are returned
        as the answer, or (None) the statement runs again. Without
        ``reconcile`` it runs again (the statements that are the same when
        repeated). Reads and other statements are simply run again.
        """
        with wrap_database_errors():
            if conn is not None:
                async with _savepoint(conn), conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(sql_text, params)
                    return await cur.fetchall()
            started = time.monotonic()
            give_up_at = started + LOST_CONNECTION_RETRY_SECONDS
            while True:
                pooled: psycopg.AsyncConnection[Any] | None = None
                flush_error: psycopg.Error | None = None
                backend = 0
                opened_by = started
                try:
                    async with _connection(self._pool, kept) as pooled:
                        kept = None  # a retry uses the pool
                        # Read now: a broken connection no longer knows it.
                        backend = pooled.pgconn.backend_pid
                        # Its backend started before this moment, whenever
                        # the connection was opened (maybe during this call).
                        opened_by = time.monotonic()
                        async with pooled.cursor(row_factory=dict_row) as cur:
                            await cur.execute(sql_text, params)
                            rows = await cur.fetchall()
                        changes = changed(rows) if changed is not None else []
                        if not changes:
                            return rows  # nothing changed (or not deferred): no flush
                        try:
                            await pooled.execute(query("flush"))
                        except psycopg.Error as exc:
                            flush_error = exc  # handled below, never by a retry
                        else:
                            return rows
                except psycopg.OperationalError as exc:
                    # A pooled connection that died (server restart,
                    # pg_terminate_backend) before the statement committed:
                    # try again on another one. The pool discards broken ones;
                    # after a restart every idle one may be dead, and the pool
                    # waits for the server while it reconnects.
                    lost = pooled is not None and (
                        pooled.broken or exc.sqlstate in _CONNECTION_ENDED
                    )
                    if time.monotonic() >= give_up_at or not lost or being_cancelled():
                        raise
                    if changed is not None and exc.sqlstate not in _CONNECTION_ENDED:
                        # No SQLSTATE: the change may have committed (see above).
                        logger.info(
                            "connection lost with no SQLSTATE while a change was in flight "
                            "(%s); settling its outcome",
                            exc,
                        )
                        found = await self._settle(backend, opened_by, started, reconcile, exc)
                        if found is not None:
                            return found
                    else:
                        logger.info("pooled connection was lost (%s); retrying", type(exc).__name__)
                    continue
                # The statement committed but the flush after it failed: never
                # run the statement again. If the connection was lost, make the
                # change durable from another one.
                assert flush_error is not None and pooled is not None
                lost = pooled.broken or flush_error.sqlstate in _CONNECTION_ENDED
                if not lost or being_cancelled():
                    raise flush_error
                await self._confirm_durable(changes, flush_error)
                return rows
        raise AssertionError("unreachable")

    async def _settle(
        self,
        backend: int,
        opened_by: float,
        started: float,
        reconcile: Reconcile | None,
        cause: psycopg.OperationalError,
    ) -> list[dict[str, Any]] | None:
        """After an ambiguous loss: end the lost backend, then ask ``reconcile`` (see :meth:`rows`).

        The backend may not have noticed the drop and still run the statement
        (waiting for a queue lock, say), or not have received it yet (a packet
        still in flight: it is idle now, and runs it later): either way it
        would commit after any look. Ending it (``pg_terminate_backend``,
        allowed on one's own role's backends), idle or not, settles that: it
        either committed already or never will. Its backend is told by its
        pid and by having started before ``opened_by``, a moment the attempt
        had its connection (a backend that reuses the pid later starts after
        it): not the call's start, since the pool may have opened that
        connection during the call.
        The flush then makes a commit it made durable (it committed without
        waiting for the disk), so that what ``reconcile`` finds is what
        survives; a commit lost in a crash is not found, and runs again.
        """
        give_up_at = time.monotonic() + LOST_CONNECTION_RETRY_SECONDS
        while True:
            try:
                async with self._pool.connection() as conn, _autocommit(conn):
                    if backend:
                        cur = await conn.execute(
                            query("end_backend"),
                            {"pid": backend, "elapsed": time.monotonic() - opened_by},
                        )
                        row = await cur.fetchone()
                        if row is not None and not row[0]:
                            raise OutcomeUnknown(
                                f"the connection was lost while a change was in flight and its "
                                f"backend {backend} did not end within 5 s: whether the change "
                                f"was made is unknown ({cause})"
                            ) from cause
                    if reconcile is None:
                        return None
                    await conn.execute(query("flush"))
                    return await reconcile(conn, time.monotonic() - started)
            except psycopg.OperationalError:
                if time.monotonic() >= give_up_at or being_cancelled():
                    raise

    async def _confirm_durable(self, changes: list[Change], cause: psycopg.Error) -> None:
        """Flush from another connection and check the changes survived.

        Any durable commit on the server waits for the WAL up to itself, which
        covers a commit made before it. If the server crashed in between, the
        change may have been lost with the unflushed WAL: then the execution
        is found at an earlier stage than reported, or (still live) without
        the owner it was given, and the call fails instead of reporting a
        change that did not happen.
        """
        logger.info("connection lost during a flush (%s); flushing elsewhere", cause)
        give_up_at = time.monotonic() + LOST_CONNECTION_RETRY_SECONDS
        while True:
            try:
                async with self._pool.connection() as pooled, _autocommit(pooled):
                    await pooled.execute(query("flush"))
                    for change in changes:
                        cur = await pooled.execute(query("status"), {"id": change.id})
                        if not change.survives(await cur.fetchone()):
                            raise FifoqError(
                                f"the server lost the change of execution {change.id} to "
                                f"{change.status} (it restarted before the change was on disk)"
                            ) from cause
                return
            except psycopg.OperationalError:
                if time.monotonic() >= give_up_at or being_cancelled():
                    raise


@contextlib.asynccontextmanager
async def _connection(
    pool: AsyncConnectionPool[Any], kept: KeptConnection | None
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The kept connection if there is one free, else a pooled one; in autocommit."""
    if kept is not None and (conn := await kept.take()) is not None:
        try:
            yield conn
        finally:
            await kept.give_back(conn)
        return
    async with pool.connection() as pooled, _autocommit(pooled):
        yield pooled


@contextlib.asynccontextmanager
async def _savepoint(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A savepoint around one statement in the caller's transaction.

    A refusal (``QueueFull``, ``PolicyRejected``, a bad group from
    ``group_by``) then undoes the statement only: the caller may catch it and
    go on in the same transaction, and the queue lock the statement took is
    let go at once (it is held to the caller's commit only on success). Two
    more round trips, on this path only.

    Plain SQL, not ``conn.transaction()``: on a connection that is not in
    autocommit and has no transaction open yet, psycopg would make that an
    outer transaction and commit it; here the SAVEPOINT is sent like any
    statement, so psycopg opens the caller's transaction first and leaves
    it open. An autocommit connection outside ``BEGIN`` has no transaction
    to keep (the statement is its own); in pipeline mode, what is queued is
    synced first to find out.
    """
    if conn.autocommit:
        await _sync_if_pipelined(conn)
        if conn.info.transaction_status is not psycopg.pq.TransactionStatus.INTRANS:
            yield
            return
    await conn.execute("SAVEPOINT fifoq_statement")
    try:
        yield
    except BaseException:
        # Back to before the statement. In pipeline mode the failed segment
        # is synced first (what was queued behind the error is skipped), and
        # the rollback then too, so that it has happened when the error
        # reaches the caller. If even that fails (a broken connection), the
        # caller's transaction is lost anyway: the statement's own error is
        # the one to report.
        with contextlib.suppress(psycopg.Error):
            await _sync_if_pipelined(conn)
            await conn.execute("ROLLBACK TO SAVEPOINT fifoq_statement")
            await conn.execute("RELEASE SAVEPOINT fifoq_statement")
            await _sync_if_pipelined(conn)
        raise
    await conn.execute("RELEASE SAVEPOINT fifoq_statement")


async def _sync_if_pipelined(conn: psycopg.AsyncConnection[Any]) -> None:
    """In pipeline mode, send what is queued and process its results now."""
    if conn.pgconn.pipeline_status is not psycopg.pq.PipelineStatus.OFF:
        async with conn.pipeline() as pipeline:
            await pipeline.sync()


@contextlib.asynccontextmanager
async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """Autocommit for the duration (fifoq's own pool has it; a caller's pool may not).

    The deferred statements commit on their own and ``flush`` is a procedure
    that commits: neither may run inside a transaction block.
    """
    if conn.autocommit:
        yield
        return
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        if not conn.closed:
            await conn.set_autocommit(False)
