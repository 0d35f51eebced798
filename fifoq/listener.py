"""The dedicated LISTEN connection of one executor: notifications, heartbeat, reconnects.

Waiters never depend on NOTIFY alone. Every heartbeat (a few times a second)
also returns the watched executions that are no longer queued, and after a
reconnect the first heartbeat re-checks all of them, so a lost notification
costs at most one heartbeat interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from .errors import ExecutorGone, wrap_database_errors
from .models import Status
from .queries import query

__all__ = ["WORK_CHANNEL", "Listener", "executor_channel"]

logger = logging.getLogger("fifoq.listener")

WORK_CHANNEL = "fifoq_work"

StatusCallback = Callable[[int, Status, datetime | None], None]


def executor_channel(executor_id: int) -> str:
    """The NOTIFY channel on which an executor hears about its executions."""
    return f"fifoq_executor_{executor_id}"


def _shutdown_socket(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down so that a read pending on it fails now."""
    # fromfd duplicates the descriptor: closing the copy leaves psycopg's own
    # descriptor to psycopg; shutdown acts on the socket both refer to.
    with (
        contextlib.suppress(OSError, psycopg.Error),
        socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)


async def _abandon(conn: psycopg.AsyncConnection[Any], query_task: asyncio.Task[Any]) -> None:
    """Make a query stuck on ``conn`` fail now and wait until its task is done."""
    _shutdown_socket(conn)
    await asyncio.wait({query_task}, timeout=1.0)
    if not query_task.done():
        query_task.cancel()
    elif not query_task.cancelled():
        query_task.exception()  # the failure we caused: retrieved, not logged by asyncio


def parse_status_payload(payload: str) -> tuple[int, Status, datetime | None]:
    """Decode ``'<id> <status> <epoch>'`` as sent by ``fifoq.notify_owner``."""
    parts = payload.split(" ")
    at = datetime.fromtimestamp(float(parts[2]), tz=UTC) if len(parts) > 2 else None
    return int(parts[0]), Status(parts[1]), at


class Listener:
    """Keeps one LISTEN connection alive for an executor and reports what it hears.

    ``on_status`` receives status changes of this executor's executions, from
    notifications and from the heartbeat poll; ``on_work`` receives action
    names of admitted executions nobody owns (only after ``listen_for_work``);
    ``on_gone(executor_id)`` is called when the database says that id was
    reaped (the manager may have moved on to a new id meanwhile).
    """

    def __init__(
        self,
        conninfo: str,
        connect_kwargs: dict[str, Any],
        *,
        executor_id: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        watched: Callable[[], Iterable[int]],
        on_status: StatusCallback,
        on_gone: Callable[[int], Awaitable[None]],
    ) -> None:
        self._conninfo = conninfo
        self._connect_kwargs = {**connect_kwargs, "autocommit": True}
        self.executor_id = executor_id
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        self._watched = watched
        self._on_status = on_status
        self._on_gone = on_gone
        self._work_callbacks: list[Callable[[str], None]] = []
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._gone: int | None = None  # the id the database said was reaped
        self._speaking_as = executor_id  # the id the last statement named
        self._bound_id: int | None = None
        self._listening_work = False
        # Set to end the current wait for notifications early: something the
        # connection must do now (LISTEN for work, re-LISTEN under a new id).
        self._poked = asyncio.Event()
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def start(self) -> None:
        """Connect (raising if the database is unreachable) and start listening."""
        self._conn = await self._connect()
        self._task = asyncio.create_task(self._run(), name=f"fifoq-listener-{self.executor_id}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection, waiting at most ``timeout`` s for the task."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # Bounded: a stop must never hang a closing executor.
            await asyncio.wait({self._task}, timeout=timeout)
        await self._close()

    def listen_for_work(self, callback: Callable[[str], None]) -> None:
        """Also hear of admitted executions nobody owns (for workers), starting now."""
        self._work_callbacks.append(callback)
        self._poked.set()

    def rebind(self, executor_id: int) -> None:
        """Serve another executor id (after this one was reaped); reconnects to re-LISTEN."""
        self.executor_id = executor_id
        self._poked.set()

    @property
    def backend_pid(self) -> int | None:
        """Server process id of the listener connection (for tests and diagnostics)."""
        return self._conn.info.backend_pid if self._conn is not None else None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._connect_kwargs)
        try:
            # Let the server notice a dead peer on TCP within seconds, not hours.
            await conn.execute(
                "SELECT set_config('tcp_keepalives_idle', '5', false),"
                " set_config('tcp_keepalives_interval', '1', false),"
                " set_config('tcp_keepalives_count', '3', false)"
            )
            # One id throughout, read once: a rebind during these awaits is
            # seen by _serve (bound id != executor id) and reconnects.
            self._speaking_as = executor_id = self.executor_id
            with wrap_database_errors():
                await conn.execute(query("attach_executor"), {"executor": executor_id})
            await conn.execute(
                sql.SQL("LISTEN {}").format(sql.Identifier(executor_channel(executor_id)))
            )
            self._bound_id = executor_id
            self._listening_work = False
        except BaseException:
            await conn.close()
            raise
        self.connected.set()
        return conn

    async def _close(self) -> None:
        self.connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._gone is not None:
                    # The manager registers a new id and rebinds us (unless
                    # a call of its own found out first and did already).
                    await self._on_gone(self._gone)
                    self._gone = None
                if self._conn is None or self._bound_id != self.executor_id:
                    await self._close()
                    self._conn = await self._reconnect()
                await self._serve(self._conn)
            except ExecutorGone:
                logger.warning(
                    "executor %s was reaped; its executions are abandoned", self._speaking_as
                )
                self._gone = self._speaking_as
                await self._close()
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError) as exc:
                logger.warning("listener connection lost (%s); reconnecting", type(exc).__name__)
                await self._close()
                await asyncio.sleep(0.05)  # back off a little before the next attempt
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("listener failed; reconnecting")
                await self._close()
                await asyncio.sleep(0.05)

    async def _reconnect(self) -> psycopg.AsyncConnection[Any]:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((psycopg.OperationalError, OSError)),
            wait=wait_exponential(multiplier=0.02, max=0.5),
            reraise=True,
        ):
            with attempt:
                conn = await self._connect()
        self.reconnects += 1
        logger.info("listener reconnected for executor %s", self.executor_id)
        return conn

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # First thing after (re)connecting: the heartbeat re-checks every
        # watched execution, so what happened while we were away is seen.
        while not self._stopping and self._bound_id == self.executor_id:
            # Cleared before the checks below: a poke from now on is acted
            # on, at the latest, in the next round.
            self._poked.clear()
            await self._heartbeat(conn)
            if self._work_callbacks and not self._listening_work:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(WORK_CHANNEL)))
                self._listening_work = True
            await self._receive(conn)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Dispatch notifications until the next heartbeat is due, or until poked.

        Without the poke, a worker that just said it is ready would LISTEN for
        work only at the next heartbeat, and miss what is admitted meanwhile
        until its next claim.
        """
        receiving = asyncio.create_task(self._dispatch_until(conn, self._interval))
        poked = asyncio.create_task(self._poked.wait())
        try:
            await asyncio.wait({receiving, poked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelling the wait for notifications leaves the connection idle
            # (no query is in flight); awaiting the task lets it release the
            # connection's lock before the next statement.
            receiving.cancel()
            poked.cancel()
            await asyncio.wait({receiving, poked})
            failure = None if receiving.cancelled() else receiving.exception()
        if failure is not None:
            raise failure

    async def _dispatch_until(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
        async for notify in conn.notifies(timeout=timeout):
            self._dispatch(notify)

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        beat = asyncio.create_task(self._heartbeat_query(conn))
        try:
            done, _ = await asyncio.wait({beat}, timeout=self._timeout)
        except asyncio.CancelledError:
            # Stopping: end the query the same way, and let it finish before
            # the connection is closed (its socket must not outlive it).
            await _abandon(conn, beat)
            raise
        if not done:
            # A silent connection (half-open: the server or a middlebox went
            # away without closing it). Cancelling the query would make psycopg
            # send a cancel request and wait up to 10 s for an answer that never
            # comes -- longer than the lease. Shutting the socket down makes the
            # pending read fail at once instead.
            await _abandon(conn, beat)
            raise TimeoutError(f"no heartbeat answer within {self._timeout:g} s")
        for execution_id, status in beat.result():
            self._on_status(execution_id, Status(status), None)

    async def _heartbeat_query(self, conn: psycopg.AsyncConnection[Any]) -> list[Any]:
        self._speaking_as = self.executor_id
        with wrap_database_errors():
            cur = await conn.execute(
                query("heartbeat"),
                {"executor": self._speaking_as, "watching": list(self._watched())},
            )
            return await cur.fetchall()

    def _dispatch(self, notify: psycopg.Notify) -> None:
        try:
            if notify.channel == WORK_CHANNEL:
                for callback in self._work_callbacks:
                    callback(notify.payload)
            else:
                execution_id, status, at = parse_status_payload(notify.payload)
                self._on_status(execution_id, status, at)
        except Exception:
            logger.exception("could not handle notification %r", notify)
