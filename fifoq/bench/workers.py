"""The benchmark's client processes: fifoq executors, ceiling loops and latency waiters.

Each runs in a process of its own (spawned, so no state is inherited) and
talks to the driver over a pipe: it connects, says ``ready``, waits for
``go``, runs, and answers with its figures. Connecting before ``go`` keeps
connection set-up out of every measured window.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import ExecutionCancelled
from ..manager import QueueManager
from ..worker import App, Worker
from .queries import query

__all__ = ["ClockOffset", "WorkerGroup", "WorkerSpec", "measure_clock_offset"]

_Conn = multiprocessing.connection.Connection


@dataclass(frozen=True)
class WorkerSpec:
    """What one benchmark process does.

    ``role`` is ``fifoq`` (enqueue_and_wait + complete loops), ``producer``
    (``enqueue_many`` batches of ``batch``), ``worker`` (a :class:`fifoq.Worker`
    with a no-op handler and ``concurrency`` slots, until told to stop),
    ``ceiling`` (insert + update loops), ``lock`` (transactions through one
    lock held to an unflushed commit, each followed by a flush, for
    ``seconds``) or ``waiter`` (one wait at a time, for the hand-off and
    cancel latencies; ``mode`` says which).
    """

    role: str
    dsn: str
    counts: dict[str, int] = field(default_factory=dict)  # action -> executions (fifoq)
    tasks_per_action: int = 1  # concurrent loops per action (fifoq)
    connections: int = 1  # pool size (fifoq) or connections (ceiling)
    total: int = 0  # insert+update pairs (ceiling)
    action: str = ""  # the queue a waiter waits in
    rounds: int = 0  # waits (waiter)
    mode: str = ""  # "handoff" or "cancel" (waiter)
    seconds: float = 0.0  # how long to run (lock)
    batch: int = 0  # payloads per enqueue_many (producer)
    concurrency: int = 0  # handlers at once (worker)


@dataclass(frozen=True)
class ClockOffset:
    """The server's clock minus this process's ``time.time()``, within ``uncertainty`` seconds."""

    offset: float
    uncertainty: float


async def measure_clock_offset(
    conn: psycopg.AsyncConnection[Any], samples: int = 25
) -> ClockOffset:
    """Estimate the client-server clock offset from the round trip with the least delay.

    The server read its clock somewhere inside the round trip, so the offset
    is known to within half of the shortest round trip (tens of
    microseconds on one host, where both read the same clock anyway).
    """
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.time()
        cur = await conn.execute(query("server_clock"), {})
        row = await cur.fetchone()
        after = time.time()
        assert row is not None
        rtt = after - before
        offset = float(row[0]) - (before + after) / 2
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    assert best is not None
    return ClockOffset(offset=best[1], uncertainty=best[0] / 2)


# -- inside the benchmark processes ------------------------------------------


def _main(spec: WorkerSpec, chan: _Conn) -> None:
    """Process entry point: run the role, report figures or the error."""
    try:
        result = asyncio.run(_ROLES[spec.role](spec, chan))
        chan.send(("done", result))
    except BaseException:
        chan.send(("error", traceback.format_exc()))
    finally:
        chan.close()


async def _ready_then_go(chan: _Conn, info: dict[str, Any] | None = None) -> None:
    chan.send(("ready", info or {}))
    message = await asyncio.to_thread(chan.recv)
    if message != "go":
        raise RuntimeError(f"expected 'go' from the benchmark driver, got {message!r}")


async def _fifoq_role(spec: WorkerSpec, chan: _Conn) -> dict[str, Any]:
    # The pool is opened at full size up front: growing it would otherwise
    # happen inside the measured window.
    async with QueueManager.connect(
        spec.dsn, min_size=spec.connections, max_size=spec.connections, name="fifoq-bench"
    ) as qm:
        remaining = dict(spec.counts)

        async def loop(action: str) -> int:
            done = 0
            while remaining[action] > 0:
                remaining[action] -= 1
                execution = await qm.enqueue_and_wait(action)
                await qm.complete(execution.id)  # no-op work
                done += 1
            return done

        await _ready_then_go(chan)
        started, cpu = time.perf_counter(), time.process_time()
        done = await asyncio.gather(
            *(loop(a) for a in spec.counts for _ in range(spec.tasks_per_action))
        )
        return {
            "completed": sum(done),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
        }


async def _until_stop(chan: _Conn) -> None:
    message = await asyncio.to_thread(chan.recv)
    if message != "stop":
        raise RuntimeError(f"expected 'stop' from the benchmark driver, got {message!r}")


async def _producer_role(spec: WorkerSpec, chan: _Conn) -> dict[str, Any]:
    async with QueueManager.connect(
        spec.dsn, min_size=1, max_size=1, name="fifoq-bench-producer"
    ) as qm:
        await _ready_then_go(chan)
        started, cpu = time.perf_counter(), time.process_time()
        remaining = dict(spec.counts)
        enqueued = 0
        while remaining:  # round robin over the actions, a batch each
            for action in list(remaining):
                n = min(spec.batch, remaining[action])
                await qm.enqueue_many(action, [None] * n)
                enqueued += n
                remaining[action] -= n
                if not remaining[action]:
                    del remaining[action]
        result = {
            "completed": enqueued,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
        }
        await _until_stop(chan)
        return result


async def _noop(payload: Any) -> None:
    return None


async def _worker_role(spec: WorkerSpec, chan: _Conn) -> dict[str, Any]:
    app = App()
    for action in spec.counts:
        app.action(action)(_noop)
    worker = Worker(
        app,
        spec.dsn,
        concurrency=spec.concurrency,
        apply_policies=False,  # the driver set them
        name="fifoq-bench-worker",
    )
    running = asyncio.create_task(worker.run())
    await worker.wait_ready()  # raises what stopped it, if it could not start
    await _ready_then_go(chan)
    cpu = time.process_time()
    await _until_stop(chan)
    spent = time.process_time() - cpu
    worker.stop()
    await running
    return {"completed": worker.completed, "cpu_seconds": spent}


async def _ceiling_role(spec: WorkerSpec, chan: _Conn) -> dict[str, Any]:
    conns = [
        await psycopg.AsyncConnection.connect(spec.dsn, autocommit=True)
        for _ in range(spec.connections)
    ]
    try:
        remaining = spec.total

        async def loop(conn: psycopg.AsyncConnection[Any]) -> int:
            nonlocal remaining
            done = 0
            while remaining > 0:
                remaining -= 1
                cur = await conn.execute(query("ceiling_insert"), {})
                row = await cur.fetchone()
                assert row is not None
                await conn.execute(query("ceiling_update"), {"id": row[0]})
                done += 1
            return done

        await _ready_then_go(chan)
        started, cpu = time.perf_counter(), time.process_time()
        done = await asyncio.gather(*(loop(c) for c in conns))
        return {
            "completed": sum(done),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
        }
    finally:
        for conn in conns:
            await conn.close()


async def _lock_role(spec: WorkerSpec, chan: _Conn) -> dict[str, Any]:
    conns = [
        await psycopg.AsyncConnection.connect(spec.dsn, autocommit=True)
        for _ in range(spec.connections)
    ]
    try:

        async def loop(conn: psycopg.AsyncConnection[Any], deadline: float) -> int:
            done = 0
            while time.perf_counter() < deadline:
                await conn.execute(query("lock_transaction"), {})
                await conn.execute(query("flush"), {})
                done += 1
            return done

        await _ready_then_go(chan)
        started = time.perf_counter()
        done = await asyncio.gather(*(loop(c, started + spec.seconds) for c in conns))
        return {"completed": sum(done), "seconds": time.perf_counter() - started}
    finally:
        for conn in conns:
            await conn.close()


async def _waiter_role(spec: WorkerSpec, chan: _Conn) -> dict[str, Any]:
    async with QueueManager.connect(
        spec.dsn, min_size=2, max_size=2, name="fifoq-bench-waiter"
    ) as qm:
        async with await psycopg.AsyncConnection.connect(spec.dsn, autocommit=True) as conn:
            clock = await measure_clock_offset(conn)
        await _ready_then_go(chan)
        returned: list[tuple[int, float]] = []  # (execution id, time.time() at return)
        for _ in range(spec.rounds):
            # A bare enqueue, then wait_started: the driver sees the waiter
            # registered (owner set) before it completes or cancels.
            execution = await qm.enqueue(spec.action)
            if spec.mode == "handoff":
                await qm.wait_started(execution.id)
                returned.append((execution.id, time.time()))
            else:
                try:
                    await qm.wait_started(execution.id)
                except ExecutionCancelled:
                    returned.append((execution.id, time.time()))
                else:
                    raise RuntimeError(f"execution {execution.id} started; expected it cancelled")
        if spec.mode == "handoff" and returned:
            await qm.complete(returned[-1][0])  # the last one admitted is ours to finish
        return {
            "returned": returned,
            "clock_offset": clock.offset,
            "clock_uncertainty": clock.uncertainty,
        }


_ROLES: dict[str, Callable[[WorkerSpec, _Conn], Coroutine[Any, Any, dict[str, Any]]]] = {
    "fifoq": _fifoq_role,
    "producer": _producer_role,
    "worker": _worker_role,
    "ceiling": _ceiling_role,
    "lock": _lock_role,
    "waiter": _waiter_role,
}


# -- in the driver -------------------------------------------------------------


class WorkerError(RuntimeError):
    """A benchmark process failed; the message carries its traceback."""


class WorkerGroup:
    """Benchmark processes started together, released together, and waited for.

    Use as an async context manager; processes still alive on exit (after an
    error) are terminated, then killed.
    """

    def __init__(self, specs: list[WorkerSpec], *, timeout: float = 600.0) -> None:
        self._specs = specs
        self._timeout = timeout
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._chans: list[_Conn] = []

    async def __aenter__(self) -> WorkerGroup:
        for spec in self._specs:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=_main, args=(spec, child), daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._chans.append(parent)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.join(timeout=0 if exc[0] is not None else 10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for chan in self._chans:
            chan.close()

    async def ready(self) -> list[dict[str, Any]]:
        """Wait until every process has connected; their ``ready`` infos."""
        return [await self._expect(chan, "ready") for chan in self._chans]

    def go(self) -> None:
        """Release every process at once."""
        for chan in self._chans:
            chan.send("go")

    def stop(self) -> None:
        """Tell processes that run until told (producers, workers) to finish and report."""
        for chan in self._chans:
            chan.send("stop")

    async def results(self) -> list[dict[str, Any]]:
        """Wait for every process's figures."""
        return [await self._expect(chan, "done") for chan in self._chans]

    def check_alive(self) -> None:
        """Raise ``WorkerError`` if a process died or reported an error before being asked."""
        for chan in self._chans:
            if chan.poll(0):
                message, payload = chan.recv()
                raise WorkerError(
                    f"a benchmark process failed:\n{payload}"
                    if message == "error"
                    else f"a benchmark process sent {message!r} before it was stopped"
                )
        dead = [p for p in self._procs if not p.is_alive()]
        if dead:
            raise WorkerError(f"a benchmark process died with exit code {dead[0].exitcode}")

    async def _expect(self, chan: _Conn, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + self._timeout
        while not chan.poll(0):
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"a benchmark process sent no {kind!r} within {self._timeout:g} s"
                )
            if any(not p.is_alive() for p in self._procs) and not chan.poll(0):
                dead = [p for p in self._procs if not p.is_alive() and p.exitcode != 0]
                if dead:
                    raise WorkerError(f"a benchmark process died with exit code {dead[0].exitcode}")
            await asyncio.to_thread(chan.poll, 0.05)
        try:
            message, payload = chan.recv()
        except EOFError:
            raise WorkerError(f"a benchmark process ended without sending {kind!r}") from None
        if message == "error":
            raise WorkerError(f"a benchmark process failed:\n{payload}")
        if message != kind:
            raise WorkerError(f"a benchmark process sent {message!r}, expected {kind!r}")
        result: dict[str, Any] = payload
        return result
