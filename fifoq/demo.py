"""`fifoq demo`: worker processes, thousands of executions, a live view, then a check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .dsn import DSN_ENV, redact
from .manager import QueueManager
from .migrations import migrate
from .models import Execution, QueueStats, Status
from .queries import load
from .worker import App

__all__ = ["DemoOptions", "Verification", "app", "run_demo", "verify"]

PREFIX = "demo."
HOSTS = ("web-1", "web-2", "web-3", "db-1")
REPORT_TIMEOUT = 1.0  # queue_timeout of demo.report: the second report waits longer than this
REPORT_SECONDS = 3.0  # how long the first report holds demo.report's only slot

app = App("fifoq demo")


@app.action("demo.build", max_concurrent=5)
async def build(payload: dict[str, Any]) -> dict[str, Any]:
    """Build an artifact; about one build in a hundred fails like a flaky test suite."""
    await asyncio.sleep(payload.get("seconds", 0.004))
    if payload.get("flaky"):
        raise RuntimeError("flaky test suite: 1 of 212 tests failed")
    return {"artifact": f"build-{payload['n']}.tar.gz"}


@app.action("demo.deploy", max_concurrent=2, group_by=("host",))
async def deploy(payload: dict[str, Any]) -> dict[str, Any]:
    """Deploy to one host: at most two deploys per host at once."""
    await asyncio.sleep(payload.get("seconds", 0.005))
    return {"host": payload["host"], "version": payload["version"]}


@app.action("demo.notify", max_concurrent=1)
async def notify(payload: dict[str, Any]) -> dict[str, Any]:
    """Post a message: strictly one at a time, in order."""
    await asyncio.sleep(0)
    return {"sent": True, "n": payload["n"]}


@app.action("demo.report", max_concurrent=1, queue_timeout=REPORT_TIMEOUT)
async def report(payload: dict[str, Any]) -> dict[str, Any]:
    """A slow report; one at a time, and nobody waits longer than a second for one."""
    await asyncio.sleep(payload.get("seconds", 0.01))
    return {"report": payload["name"]}


def _query(name: str) -> LiteralString:
    # The text comes from the packaged demo.sql, never from user input.
    return load("fifoq", "demo.sql")[name]


@dataclass(frozen=True)
class DemoOptions:
    """Size of the demo run."""

    executions: int = 3000
    workers: int = 3
    concurrency: int = 8
    producers: int = 3
    seed: int = 7
    timeout: float | None = None  # default: 60 s plus 10 ms per execution


@dataclass
class _Run:
    """What the scenario learned while it ran."""

    first_id: int = 0
    planned: int = 0
    enqueued: int = 0
    started: float = 0.0
    finished: float = 0.0
    cancelled: Execution | None = None
    cancelled_after: float = 0.0
    timed_out: Execution | None = None
    worker_pids: list[int] = field(default_factory=list)
    worker_exit_codes: list[int | None] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _plan(options: DemoOptions) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(options.seed)
    plan: list[tuple[str, dict[str, Any]]] = []
    for n in range(options.executions):
        r = rng.random()
        if r < 0.45:
            seconds, flaky = rng.uniform(0.002, 0.006), rng.random() < 0.01
            plan.append(("demo.build", {"n": n, "seconds": seconds, "flaky": flaky}))
        elif r < 0.85:
            host = rng.choice(HOSTS)
            payload = {
                "n": n,
                "host": host,
                "version": f"1.{n}",
                "seconds": rng.uniform(0.003, 0.008),
            }
            plan.append(("demo.deploy", payload))
        else:
            plan.append(("demo.notify", {"n": n, "channel": "#ops"}))
    return plan


def _live_table(rows: list[QueueStats], rates: dict[tuple[str, str], float]) -> Table:
    table = Table(title_justify="left")
    table.add_column("queue", no_wrap=True)
    for name in (
        "waiting",
        "active",
        "limit",
        "done",
        "failed",
        "cancelled",
        "timed out",
        "done/s",
    ):
        table.add_column(name, justify="right")
    for row in rows:
        done = row.total_completed + row.total_cancelled + row.total_timed_out
        done += row.total_abandoned
        table.add_row(
            _queue_label(row.action, row.group),
            str(row.queue_length),
            str(row.active_count),
            "∞" if row.max_concurrent is None else str(row.max_concurrent),
            str(done),
            str(row.total_failed),
            str(row.total_cancelled),
            str(row.total_timed_out),
            f"{rates.get((row.action, row.group or ''), 0.0):.0f}",
        )
    return table


class _Scenario:
    """One demo run against a migrated database."""

    def __init__(self, dsn: str, options: DemoOptions, out: Console, log_dir: Path) -> None:
        self.dsn = dsn
        self.options = options
        self.out = out
        self.log_dir = log_dir
        self.run = _Run()
        self.procs: list[asyncio.subprocess.Process] = []

    async def execute(self) -> _Run:
        run = self.run
        # SIGTERM cancels like Ctrl-C does, so the workers are stopped in order.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        async with QueueManager.connect(self.dsn, name="fifoq demo", max_size=8) as qm:
            # Policies first: an execution enqueued before its policy exists
            # would be admitted under the default (unlimited).
            await app.apply_policies(qm)
            self.out.print(
                "policies: demo.build max 5 at once; demo.deploy max 2 per host; "
                f"demo.notify max 1; demo.report max 1, queue timeout {REPORT_TIMEOUT:g} s"
            )
            await self._start_workers()
            try:
                await self._wait_for_workers()
                await self._produce_and_watch(qm)
            finally:
                await self._stop_workers()
        await self._check()
        return run

    # -- workers ------------------------------------------------------------

    async def _start_workers(self) -> None:
        env = {**os.environ, DSN_ENV: self.dsn}  # not on the command line: ps would show it
        args = [
            "-m",
            "fifoq.cli",
            "worker",
            "fifoq.demo:app",
            "--concurrency",
            str(self.options.concurrency),
            "--grace",
            "5",
            # Every freed slot is offered to all the workers, which then race
            # for it: the race is what the demo's check is about. (By default
            # a worker whose handler was quick keeps the slot, and with short
            # handlers one worker may run a whole queue.)
            "--keep-slot-under",
            "0",
            "--log-level",
            "warning",
        ]
        for i in range(self.options.workers):
            log = open(self.log_dir / f"worker-{i + 1}.log", "wb")  # noqa: SIM115 - owned by the child
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *args,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    # Own process group: Ctrl-C in the terminal reaches the demo,
                    # which then stops the workers itself, in order.
                    start_new_session=True,
                )
            finally:
                log.close()
            self.procs.append(proc)
            self.run.worker_pids.append(proc.pid)
        self.out.print(
            f"started {len(self.procs)} worker processes "
            f"(pids {', '.join(map(str, self.run.worker_pids))}): "
            f"fifoq worker fifoq.demo:app --concurrency {self.options.concurrency} "
            "--keep-slot-under 0"
        )

    async def _wait_for_workers(self, timeout: float = 60.0) -> None:
        """Return once every worker process is connected (else the first one up takes all)."""
        deadline = time.monotonic() + timeout
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while True:
                cur = await conn.execute(
                    _query("workers_connected"), {"pids": self.run.worker_pids}
                )
                row = await cur.fetchone()
                if row is not None and row[0] >= len(self.procs):
                    return
                exited = [p.pid for p in self.procs if p.returncode is not None]
                if exited:
                    raise RuntimeError(
                        f"worker process(es) {exited} exited at start; see {self.log_dir}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the workers did not connect within {timeout:g} s")
                await asyncio.sleep(0.05)

    async def _stop_workers(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
            self.run.worker_exit_codes.append(proc.returncode)

    # -- producing and watching --------------------------------------------

    async def _produce_and_watch(self, qm: QueueManager) -> None:
        options, run = self.options, self.run
        plan = _plan(options)
        run.planned = len(plan) + 3
        run.started = time.monotonic()
        # Three executions with a story: a slow report holding demo.report's
        # only slot, a second report that waits past its queue timeout, and a
        # long build that is cancelled while its handler runs.
        first = await qm.enqueue("demo.report", {"name": "nightly", "seconds": REPORT_SECONDS})
        late = await qm.enqueue("demo.report", {"name": "weekly", "seconds": 0.01})
        long_build = await qm.enqueue("demo.build", {"n": -1, "seconds": 60.0})
        run.first_id = first.id
        run.enqueued = 3
        self.out.print(f"enqueuing {len(plan)} executions from {options.producers} producers...")

        async def produce(share: list[tuple[str, dict[str, Any]]]) -> None:
            for action, payload in share:
                await qm.enqueue(action, payload)
                run.enqueued += 1

        producers = [
            asyncio.create_task(produce(plan[i :: options.producers]))
            for i in range(options.producers)
        ]
        canceller = asyncio.create_task(self._cancel_when_running(qm, long_build.id))
        timeout = options.timeout or 60.0 + options.executions * 0.01
        deadline = time.monotonic() + timeout
        throughput = _Throughput()
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            with Live(console=self.out, auto_refresh=False) as live:
                while True:
                    rows = [r for r in await qm.live_stats() if r.action.startswith(PREFIX)]
                    live.update(self._render(rows, throughput.update(rows)), refresh=True)
                    if all(p.done() for p in producers) and canceller.done():
                        cur = await conn.execute(
                            _query("unfinished"), {"prefix": PREFIX + "%", "first_id": run.first_id}
                        )
                        row = await cur.fetchone()
                        if row is not None and row[0] == 0:
                            break
                    for task in (*producers, canceller):
                        if task.done() and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                    if time.monotonic() > deadline:
                        for task in (*producers, canceller):
                            task.cancel()
                        raise TimeoutError(f"the demo did not finish within {timeout:g} s")
                    if any(p.returncode is not None for p in self.procs):
                        raise RuntimeError(
                            f"a worker process exited early; see its log in {self.log_dir}"
                        )
                    await asyncio.sleep(0.25)
        if not self.out.is_terminal:
            self.out.line()  # Live ends its last frame without one when not on a terminal
        run.finished = time.monotonic()
        run.cancelled = await qm.get(long_build.id)
        run.timed_out = await qm.get(late.id)

    async def _cancel_when_running(self, qm: QueueManager, execution_id: int) -> None:
        # Cancel the long build once a worker has claimed it and its handler runs.
        deadline = time.monotonic() + 30
        while True:
            execution = await qm.get(execution_id)
            if execution.owner is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no worker claimed the long build within 30 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # let its handler run for a moment: the demo shows a real stop
        await qm.cancel(execution_id)
        self.run.cancelled_after = time.monotonic() - self.run.started

    def _render(self, rows: list[QueueStats], rates: dict[tuple[str, str], float]) -> Group:
        run = self.run
        elapsed = time.monotonic() - run.started
        total = sum(rates.values())
        head = Text(
            f"{elapsed:5.1f} s  enqueued {run.enqueued}/{run.planned}  "
            f"workers {sum(p.returncode is None for p in self.procs)}  "
            f"finishing {total:.0f}/s",
            style="bold",
        )
        return Group(head, _live_table(rows, rates))

    # -- checking -----------------------------------------------------------

    async def _check(self) -> None:
        run = self.run
        checked = await verify(self.dsn, PREFIX, run.first_id)
        run.problems.extend(checked.problems)
        figures, owners = checked.figures, checked.owners

        table = Table(title="per queue, checked from fifoq.executions", title_justify="left")
        table.add_column("queue", no_wrap=True)
        for name in ("limit", "max active", "FIFO", "runs", "ok", "failed", "cancel", "timeout"):
            table.add_column(name, justify="right")
        table.add_column("wait p50", justify="right")
        table.add_column("wait p99", justify="right")
        by_queue = {(f["action"], f["group"]): f for f in figures}
        for row in checked.limits:
            key = (row["action"], row["group"])
            limit, highest = row["max_concurrent"], row["max_active"]
            order = checked.fifo.get(key, {"out_of_order": 0, "overtaken": 0})
            fifo_ok = order["out_of_order"] == 0 and order["overtaken"] == 0
            fig = by_queue.get(key)
            if fig is None:
                continue
            table.add_row(
                _queue_label(row["action"], row["group"]),
                "∞" if limit is None else str(limit),
                Text(str(highest), style="red" if limit is not None and highest > limit else ""),
                Text("ok" if fifo_ok else "BROKEN", style="green" if fifo_ok else "bold red"),
                str(fig["executions"]),
                str(fig["succeeded"]),
                str(fig["failed"]),
                str(fig["cancelled"]),
                str(fig["timed_out"]),
                _ms(fig["wait_p50"]),
                _ms(fig["wait_p99"]),
            )
        self.out.print(table)

        total = sum(f["executions"] for f in figures)
        if total != run.planned:
            run.problems.append(f"{run.planned} executions enqueued but {total} found")
        if run.cancelled is None or run.cancelled.status is not Status.CANCELLED:
            status = run.cancelled.status if run.cancelled else "missing"
            run.problems.append(f"the long build should be cancelled, it is {status}")
        else:
            self.out.print(
                f"cancelled: execution {run.cancelled.id} (demo.build) {run.cancelled_after:.1f} s "
                "into the run, while its handler ran; the handler task was cancelled and its "
                "slot went to the next build"
            )
        if run.timed_out is None or run.timed_out.status is not Status.TIMED_OUT:
            status = run.timed_out.status if run.timed_out else "missing"
            run.problems.append(f"the second report should have timed out, it is {status}")
        else:
            waited = run.timed_out.finished_at - run.timed_out.enqueued_at  # type: ignore[operator]
            self.out.print(
                f"timed out: execution {run.timed_out.id} (demo.report) waited "
                f"{waited.total_seconds():.2f} s behind a {REPORT_SECONDS:g} s report; "
                f"its queue timeout is {REPORT_TIMEOUT:g} s"
            )
        bad_exits = [code for code in run.worker_exit_codes if code != 0]
        if bad_exits:
            run.problems.append(f"worker processes exited with {bad_exits} (logs: {self.log_dir})")

        elapsed = run.finished - run.started
        spread = ", ".join(f"{o['executions']}" for o in owners)
        self.out.print(
            f"{total} executions in {elapsed:.1f} s: {total / elapsed:.0f}/s end to end, "
            f"run by {len(owners)} worker processes ({spread})"
        )


@dataclass
class Verification:
    """What :func:`verify` found in the database."""

    limits: list[dict[str, Any]]
    fifo: dict[tuple[str, str], dict[str, Any]]
    figures: list[dict[str, Any]]
    owners: list[dict[str, Any]]
    problems: list[str]


async def verify(dsn: str, prefix: str = PREFIX, first_id: int = 1) -> Verification:
    """Check the queues of actions starting with ``prefix`` from fifoq's tables.

    Problems: a queue that ever had more executions active than its limit
    (from the started_at/finished_at intervals), one that started
    executions out of seq order or while an earlier one still waited, and
    executions (id >= ``first_id``) left unfinished or abandoned.
    """
    params = {"prefix": prefix + "%", "first_id": first_id}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_query("max_active"), params)
        limits = await cur.fetchall()
        await cur.execute(_query("fifo"), params)
        fifo = {(r["action"], r["group"]): r for r in await cur.fetchall()}
        await cur.execute(_query("figures"), params)
        figures = await cur.fetchall()
        await cur.execute(_query("workers"), params)
        owners = await cur.fetchall()
    problems: list[str] = []
    for row in limits:
        queue = row["action"] + (f" [{row['group']}]" if row["group"] else "")
        limit, highest = row["max_concurrent"], row["max_active"]
        if limit is not None and highest > limit:
            problems.append(f"{queue}: {highest} active at once, limit {limit}")
        order = fifo.get((row["action"], row["group"]))
        if order and (order["out_of_order"] or order["overtaken"]):
            problems.append(
                f"{queue}: {order['out_of_order']} started out of seq order, "
                f"{order['overtaken']} started while an earlier one still waited"
            )
    for fig in figures:
        queue = fig["action"] + (f" [{fig['group']}]" if fig["group"] else "")
        if fig["unfinished"]:
            problems.append(f"{queue}: {fig['unfinished']} executions never finished")
        if fig["abandoned"]:
            problems.append(f"{queue}: {fig['abandoned']} executions were abandoned")
    return Verification(limits, fifo, figures, owners, problems)


def _queue_label(action: str, group: str | None) -> Text:
    # Text, not markup: "[web-1]" must not be read as a rich style tag.
    return Text(action + (f" [{group}]" if group else ""))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


class _Throughput:
    """Finished executions per second per queue over the last couple of seconds."""

    def __init__(self, window: float = 2.0) -> None:
        self.window = window
        self.samples: dict[tuple[str, str], list[tuple[float, int]]] = {}

    def update(self, rows: list[QueueStats]) -> dict[tuple[str, str], float]:
        now = time.monotonic()
        rates: dict[tuple[str, str], float] = {}
        for row in rows:
            done = row.total_completed + row.total_cancelled + row.total_timed_out
            done += row.total_abandoned
            history = self.samples.setdefault((row.action, row.group or ""), [])
            history.append((now, done))
            while len(history) > 2 and now - history[1][0] >= self.window:
                history.pop(0)
            (t0, d0), (t1, d1) = history[0], history[-1]
            rates[(row.action, row.group or "")] = (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0
        return rates


def run_demo(
    dsn: str | None, options: DemoOptions | None = None, out: Console | None = None
) -> int:
    """Run the demo; 0 when every check passed, 1 otherwise.

    With no ``dsn`` an embedded throwaway PostgreSQL is started and removed
    afterwards; with one, that server is migrated and used, and the data is
    left for inspection.
    """
    options = options or DemoOptions()
    out = out or Console()
    with contextlib.ExitStack() as stack:
        if dsn is None:
            from .embedded import EmbeddedPostgres

            out.print("starting a throwaway PostgreSQL server...")
            server = stack.enter_context(EmbeddedPostgres(durable=False))
            stack.callback(out.print, "removed the embedded PostgreSQL server and its data")
            out.print(f"server: {server.description}")
            target = server.dsn
        else:
            target = dsn
            out.print(f"server: {redact(dsn) if dsn else 'libpq defaults (PG* variables)'}")
        migrate(target)
        out.print("schema fifoq migrated")
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fifoq-demo-")))
        scenario = _Scenario(target, options, out, log_dir)
        try:
            run = asyncio.run(scenario.execute())
        except (KeyboardInterrupt, asyncio.CancelledError):
            out.print("interrupted: the worker processes were stopped")
            return 130
        except BaseException:
            _show_logs(out, log_dir)
            raise
        if run.problems:
            _show_logs(out, log_dir)
            out.print("[bold red]verdict: FAILED[/]")
            for problem in run.problems:
                out.print(f"  - {problem}")
            return 1
        out.print(
            "[bold green]verdict: OK[/] - no queue ever had more executions active than its "
            "limit, every queue started its executions in FIFO (seq) order, and every "
            "execution ended in exactly one final status"
        )
        if dsn is not None:
            out.print(
                "the data stays in the database; inspect it with psql, for example:\n"
                f'  psql \'{redact(dsn)}\' -c "SELECT action, \\"group\\", status, count(*) '
                "FROM fifoq.execution_details WHERE action LIKE 'demo.%' "
                'GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"'
            )
    return 0


def _show_logs(out: Console, log_dir: Path) -> None:
    for path in sorted(log_dir.glob("worker-*.log")):
        lines = path.read_text(errors="replace").splitlines()
        if lines:
            out.print(f"--- last lines of {path.name} ---")
            for line in lines[-15:]:
                out.print(Text(line))
