"""A TCP proxy for the fault tests that can black-hole its connections without closing them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class Pipe:
    """One proxied client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    upstream_port: int  # our local port towards the server = client_port in pg_stat_activity
    blackholed: bool = False
    # Server-to-client bytes are swallowed (the replies "never arrive"); the
    # client-to-server direction still flows.
    muted: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def cut(self) -> None:
        """Reset the client side (RST, no FIN): the client's read fails with no SQLSTATE.

        The server side stays open and silent, as after a network drop: the
        backend does not learn of it.
        """
        sock = self.client.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.transport.abort()


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to a PostgreSQL server; ``blackhole()`` makes pipes go silent.

    A black-holed pipe keeps both sockets open and reads what either side
    sends, but forwards nothing: to both ends it looks like a peer that
    vanished without a FIN or RST (a half-open connection). New connections
    are forwarded normally unless ``refuse_new`` is set.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.pipes: list[Pipe] = []
        self.refuse_new = False
        self.refused = 0
        self.accept_delay = 0.0  # seconds a new connection waits before it is forwarded
        # mute_when_sent(marker): the first pipe whose client sends bytes
        # containing the marker gets muted before they are forwarded.
        self._marker: bytes | None = None
        self.muted: asyncio.Future[Pipe] | None = None
        # reset_when_sent(marker, delay): the client side of the first pipe
        # that sends the marker is reset at once, and the bytes reach the
        # server ``delay`` seconds later (a packet still in flight).
        self._late_marker: bytes | None = None
        self._late_delay = 0.0
        self.late: asyncio.Future[Pipe] | None = None
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self.pipes:
            for task in pipe.tasks:
                task.cancel()
            for writer in (pipe.client, pipe.upstream):
                writer.close()
        for pipe in self.pipes:
            for task in pipe.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for writer in (pipe.client, pipe.upstream):
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        await self._server.wait_closed()

    def blackhole(self, *, upstream_ports: set[int] | None = None) -> list[Pipe]:
        """Silence the open pipes (all, or those with these upstream ports); returns them."""
        chosen = [
            p for p in self.pipes if upstream_ports is None or p.upstream_port in upstream_ports
        ]
        for pipe in chosen:
            pipe.blackholed = True
        return chosen

    def mute_when_sent(self, marker: bytes) -> asyncio.Future[Pipe]:
        """Mute the replies of the next pipe that sends ``marker`` (e.g. a function name).

        The statement itself reaches the server and runs; its reply does not
        come back. Returns a future set to that pipe. psycopg sends a
        statement's text until it prepares it (its 5th run on a connection),
        so arm this before the statement's first runs.
        """
        self._marker = marker
        self.muted = asyncio.get_running_loop().create_future()
        return self.muted

    def reset_when_sent(self, marker: bytes, delay: float) -> asyncio.Future[Pipe]:
        """Reset the client of the next pipe that sends ``marker``; forward it ``delay`` s later.

        The client sees its connection reset (no SQLSTATE) before the server
        has even received the statement; the server then gets and runs it
        on a backend that was idle when the client found out. Returns a
        future set to that pipe once the bytes were forwarded.
        """
        self._late_marker = marker
        self._late_delay = delay
        self.late = asyncio.get_running_loop().create_future()
        return self.late

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse_new:
            self.refused += 1
            writer.close()  # the client sees the server close the connection at once
            return
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)  # a slow network: the server sees it later
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        pipe = Pipe(writer, up_writer, up_writer.get_extra_info("sockname")[1])
        self.pipes.append(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(pipe, reader, up_writer)),
            asyncio.create_task(self._pump(pipe, up_reader, writer)),
        ]

    async def _pump(
        self, pipe: Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream = writer is pipe.upstream
        try:
            while data := await reader.read(65536):
                if upstream and self._marker is not None and self._marker in data:
                    self._marker = None
                    pipe.muted = True
                    assert self.muted is not None
                    self.muted.set_result(pipe)
                if upstream and self._late_marker is not None and self._late_marker in data:
                    self._late_marker = None
                    pipe.muted = True  # nothing more for the client, which is gone
                    pipe.cut()
                    await asyncio.sleep(self._late_delay)
                    writer.write(data)
                    await writer.drain()
                    assert self.late is not None
                    self.late.set_result(pipe)
                    continue
                if pipe.blackholed or (pipe.muted and not upstream):
                    continue  # swallowed: the packets "never arrive"
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if not pipe.blackholed and not pipe.muted:
            writer.close()
