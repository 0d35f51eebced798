"""Runs the selected workloads with a progress bar and reports; the body of `fifoq bench`."""

from __future__ import annotations

import asyncio
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..embedded import EmbeddedPostgresError
from .checks import GuaranteeViolated
from .machine import describe_machine, load_average
from .report import (
    PlotUnavailable,
    Results,
    check_plot_available,
    print_machine,
    print_report,
    write_json,
    write_plot,
)
from .server import BenchServer
from .workers import WorkerError
from .workloads import run_cancel, run_handoff, run_stats, run_storage, run_throughput

__all__ = ["WORKLOADS", "BenchOptions", "BenchUsageError", "Sizes", "run"]

WORKLOADS = ("throughput", "many_queues", "handoff", "cancel", "stats", "storage")
STORAGE_BATCH = 10_000
MAX_PROCESSES = 64


# What matplotlib's Agg backend (the one write_plot uses) can write.
PLOT_FORMATS = frozenset(
    [
        "eps",
        "jpeg",
        "jpg",
        "pdf",
        "pgf",
        "png",
        "ps",
        "raw",
        "rgba",
        "svg",
        "svgz",
        "tif",
        "tiff",
        "webp",
    ]
)


def _check_writable(option: str, path: Path) -> None:
    """Raise BenchUsageError unless ``path`` can be written (its folder exists and is writable)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BenchUsageError(f"{option}: {path} is a folder; give a file name")
    if not folder.is_dir():
        raise BenchUsageError(f"{option}: folder {folder} does not exist")
    existed = path.exists()
    try:
        with path.open("a"):  # the one sure test: open it for writing, as the end of the run will
            pass
    except OSError as exc:
        raise BenchUsageError(f"{option}: cannot write {path} ({exc.strerror})") from None
    if not existed:
        path.unlink()


class BenchUsageError(ValueError):
    """A bad command-line value for `fifoq bench`."""


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    single: tuple[tuple[int, int], ...]  # (executions, limit) on one queue
    many_actions: int
    many_per_action: int
    many_limit: int
    handoff_rounds: int
    cancel_rounds: int
    stats_actions: int
    stats_history: int
    stats_samples: int
    storage_queued: int
    lock_seconds: float  # how long each one-lock bound measurement runs


# Issue 4's workloads.
FULL = Sizes(
    single=((1_000, 5), (10_000, 10)),
    many_actions=100,
    many_per_action=100,
    many_limit=2,
    handoff_rounds=500,
    cancel_rounds=300,
    stats_actions=100,
    stats_history=1_000_000,
    stats_samples=50,
    storage_queued=100_000,
    lock_seconds=3.0,
)
# The same shapes, shrunk to run in seconds (tests).
QUICK = Sizes(
    single=((100, 5), (400, 10)),
    many_actions=10,
    many_per_action=20,
    many_limit=2,
    handoff_rounds=30,
    cancel_rounds=30,
    stats_actions=100,
    stats_history=20_000,
    stats_samples=10,
    storage_queued=5_000,
    lock_seconds=0.5,
)


@dataclass(frozen=True)
class BenchOptions:
    """The validated options of one benchmark run."""

    dsn: str | None
    quick: bool
    json_file: Path | None
    plot: Path | None
    processes: tuple[int, ...]
    workloads: tuple[str, ...]
    repeat: int
    server_settings: tuple[tuple[str, str], ...] = ()
    debug: bool = False

    @property
    def sizes(self) -> Sizes:
        """Workload sizes for this run."""
        return QUICK if self.quick else FULL

    @classmethod
    def parse(
        cls,
        *,
        dsn: str | None = None,
        quick: bool = False,
        json_file: Path | None = None,
        plot: Path | None = None,
        processes: str | Sequence[int] = "1,3",
        workloads: str | Sequence[str] | None = None,
        repeat: int = 1,
        server_settings: Sequence[str] = (),
        debug: bool = False,
    ) -> BenchOptions:
        """Validate command-line values; ``BenchUsageError`` names what is wrong."""
        if isinstance(processes, str):
            try:
                counts = tuple(int(p) for p in processes.split(",") if p.strip())
            except ValueError:
                raise BenchUsageError(
                    f"--processes must be comma-separated whole numbers, got {processes!r}"
                ) from None
        else:
            counts = tuple(processes)
        if not counts or any(not 1 <= p <= MAX_PROCESSES for p in counts):
            raise BenchUsageError(
                f"--processes must list counts from 1 to {MAX_PROCESSES}, got {processes!r}"
            )
        chosen: tuple[str, ...] = WORKLOADS
        if workloads is not None:
            names = workloads.split(",") if isinstance(workloads, str) else list(workloads)
            names = [n.strip() for n in names if n.strip()]
            unknown = [n for n in names if n not in WORKLOADS]
            if unknown or not names:
                raise BenchUsageError(
                    f"unknown workload {', '.join(map(repr, unknown)) or '(none given)'}; "
                    f"choose from {', '.join(WORKLOADS)}"
                )
            chosen = tuple(w for w in WORKLOADS if w in names)
        if repeat < 1:
            raise BenchUsageError(f"--repeat must be at least 1, got {repeat}")
        # Checked now, not after a run of many minutes whose figures would
        # then have nowhere to go.
        for option, path in (("--json", json_file), ("--plot", plot)):
            if path is not None:
                _check_writable(option, path)
        if plot is not None and plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
            raise BenchUsageError(
                f"--plot: cannot draw a {plot.suffix or 'file without a suffix'!r}; name the file "
                f"with one of .{', .'.join(sorted(PLOT_FORMATS))}"
            )
        if dsn is not None and not dsn.strip():
            dsn = None
        settings: list[tuple[str, str]] = []
        for item in server_settings:
            name, sep, value = item.partition("=")
            if not sep or not re.fullmatch(r"[a-z_][a-z0-9_.]*", name.strip()):
                raise BenchUsageError(f"--server-setting must look like NAME=VALUE, got {item!r}")
            settings.append((name.strip(), value.strip()))
        if settings and dsn is not None:
            raise BenchUsageError(
                "--server-setting applies to the embedded server only; set it on the server "
                "given by --dsn yourself"
            )
        return cls(
            dsn=dsn,
            quick=quick,
            json_file=json_file,
            plot=plot,
            processes=tuple(sorted(set(counts))),
            workloads=chosen,
            repeat=repeat,
            server_settings=tuple(settings),
            debug=debug,
        )

    def describe(self) -> dict[str, Any]:
        """The options as JSON values (the DSN left out: see the machine's location)."""
        return {
            "quick": self.quick,
            "processes": list(self.processes),
            "workloads": list(self.workloads),
            "repeat": self.repeat,
            "server_settings": dict(self.server_settings),
            "sizes": self.sizes.__dict__,
        }

    def steps(self) -> int:
        """How many progress steps the run takes."""
        s = self.sizes
        runs = len(self.processes) * self.repeat * 3  # ceiling + fifoq per call + batched
        count = 0
        if "throughput" in self.workloads:
            count += len(s.single) * runs * 4 // 3  # and the one-lock bound
        if "many_queues" in self.workloads:
            count += runs
        count += ("handoff" in self.workloads) + ("cancel" in self.workloads)
        if "stats" in self.workloads:
            count += 3
        if "storage" in self.workloads:
            count += math.ceil(s.storage_queued / STORAGE_BATCH)
        return count


class _Steps:
    """Advances the progress bar as each step starts, so the bar shows the running step."""

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._task = progress.add_task("starting", total=total)
        self._started = 0

    def __call__(self, description: str) -> None:
        if self._started:
            self._progress.advance(self._task)
        self._started += 1
        self._progress.update(self._task, description=description)

    def finish(self) -> None:
        self._progress.update(self._task, completed=self._started, description="done")


async def _run_workloads(
    server: BenchServer, options: BenchOptions, results: Results, step: _Steps
) -> None:
    s = options.sizes
    if "throughput" in options.workloads:
        for executions, limit in s.single:
            for processes in options.processes:
                results.throughput.extend(
                    await run_throughput(
                        server,
                        workload="single",
                        label=f"{executions:,} x limit {limit}",
                        actions=1,
                        per_action=executions,
                        limit=limit,
                        processes=processes,
                        repeat=options.repeat,
                        step=step,
                        lock_seconds=s.lock_seconds,
                    )
                )
    if "many_queues" in options.workloads:
        for processes in options.processes:
            results.throughput.extend(
                await run_throughput(
                    server,
                    workload="many",
                    label=f"{s.many_actions} actions x {s.many_per_action} x limit {s.many_limit}",
                    actions=s.many_actions,
                    per_action=s.many_per_action,
                    limit=s.many_limit,
                    processes=processes,
                    repeat=options.repeat,
                    step=step,
                )
            )
    if "handoff" in options.workloads:
        results.handoff = await run_handoff(server, rounds=s.handoff_rounds, step=step)
    if "cancel" in options.workloads:
        results.cancel = await run_cancel(server, rounds=s.cancel_rounds, step=step)
    if "stats" in options.workloads:
        results.stats = await run_stats(
            server,
            actions=s.stats_actions,
            history_rows=s.stats_history,
            samples=s.stats_samples,
            step=step,
        )
    if "storage" in options.workloads:
        results.storage = await run_storage(server, queued=s.storage_queued, step=step)


def _console(*, stderr: bool) -> Console:
    """A console; 120 columns when not a terminal, so the tables do not wrap in files."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=120)
    return console


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _on_sigterm(handler: _Handler) -> _Handler:
    """Install a SIGTERM handler (main thread only); returns the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def run(options: BenchOptions, *, out: Console | None = None, err: Console | None = None) -> int:
    """Run the benchmark; print the machine, a progress bar and the tables. Returns the exit status.

    1 when a workload broke FIFO order, the limit or the queue counters (the
    violations are printed), or when the run could not proceed; 0 otherwise.
    Missing targets do not fail the run: they are benchmarks, not tests.
    """
    out = out or _console(stderr=False)
    err = err or _console(stderr=True)
    if options.plot is not None:
        try:
            check_plot_available()
        except PlotUnavailable as exc:
            err.print(f"fifoq: error: {exc}", markup=False, highlight=False)
            return 1
    results = Results(options=options.describe())
    started = time.perf_counter()
    status = 0
    # SIGTERM ends the run like Ctrl-C, so the embedded server and the
    # benchmark processes are stopped and removed on the way out.
    previous = _on_sigterm(_interrupt)
    try:
        with BenchServer(options.dsn, settings=dict(options.server_settings)) as server:
            results.machine = describe_machine(server.admin_dsn, server.location)
            print_machine(out, results.machine)
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
            ) as progress:
                steps = _Steps(progress, options.steps())
                asyncio.run(_run_workloads(server, options, results, steps))
                steps.finish()
    except GuaranteeViolated as exc:
        if options.debug:
            raise
        results.failure = str(exc)
        err.print(f"[bold red]GUARANTEE VIOLATED in workload {exc.workload}:[/]")
        for violation in exc.violations:
            err.print(f"  [red]{violation}[/]", markup=True, highlight=False)
        status = 1
    except (EmbeddedPostgresError, PermissionError, psycopg.Error, WorkerError, OSError) as exc:
        if options.debug:
            raise
        results.failure = _one_line(exc)
        err.print(f"fifoq: error: {results.failure}", markup=False, highlight=False)
        status = 1
    except KeyboardInterrupt:
        results.failure = "interrupted"
        err.print("interrupted", markup=False)
        status = 130
    finally:
        _on_sigterm(previous)
    results.seconds = time.perf_counter() - started
    results.load_average_end = load_average()
    print_report(out, results)
    if options.json_file is not None:
        write_json(results, options.json_file)
        err.print(f"figures written to {options.json_file}", markup=False, highlight=False)
    if options.plot is not None and results.throughput:
        write_plot(results, options.plot)
        err.print(f"plot written to {options.plot}", markup=False, highlight=False)
    return status
