"""Benchmark results: the targets, the final tables, the JSON file and the plot."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .machine import Machine
from .workloads import (
    PRODUCER_BATCH,
    CancelResult,
    Distribution,
    HandoffResult,
    StatsResult,
    StorageResult,
    Throughput,
)

__all__ = ["Results", "Target", "print_report", "write_json", "write_plot"]

# The original queue manager's table (issue 4): 1,000 at limit 5 > 200/s,
# 10,000 at limit 10 > 500/s; fifoq's own goal at 10,000 x limit 10 with
# three processes: 3,000/s and half the insert+update ceiling.
ORIGINAL_TARGETS = {5: 200.0, 10: 500.0}
ORIGINAL_SIZES = {5: 1_000, 10: 10_000}  # judged only at these sizes (not --quick's)
FIFOQ_TARGET_RATE = 3000.0
FIFOQ_TARGET_RATIO = 0.5
FIFOQ_TARGET_PROCESSES = 3
HANDOFF_P99_MS = 10.0
CANCEL_SERVER_MS = 1.0
STATS_REFRESH_MS = 5.0
STATS_FLAT_RATIO = 1.5  # "flat": with history at most 1.5 x the time without
STORAGE_BYTES = 300.0


@dataclass(frozen=True)
class Target:
    """One target of issue 4 and how the run measured against it."""

    name: str
    goal: str
    measured: str
    met: bool


@dataclass
class Results:
    """Everything one benchmark run measured."""

    machine: Machine | None = None
    options: dict[str, Any] = field(default_factory=dict)
    throughput: list[Throughput] = field(default_factory=list)
    handoff: HandoffResult | None = None
    cancel: CancelResult | None = None
    stats: StatsResult | None = None
    storage: StorageResult | None = None
    failure: str | None = None  # a broken guarantee or an error that stopped the run
    seconds: float = 0.0
    load_average_end: str = ""

    def targets(self) -> list[Target]:
        """The targets this run can judge, with their verdicts."""
        found: list[Target] = []
        for t in self.throughput:
            if (
                t.workload == "single"
                and t.limit in ORIGINAL_TARGETS
                and t.actions == 1
                and t.per_action >= ORIGINAL_SIZES[t.limit]
            ):
                goal = ORIGINAL_TARGETS[t.limit]
                found.append(
                    Target(
                        f"{t.label}, {t.processes} proc, {t.api} (original)",
                        f"> {goal:,.0f}/s",
                        f"{t.median:,.0f}/s",
                        t.median > goal,
                    )
                )
            if (
                t.workload == "single"
                and t.limit == 10
                and t.processes == FIFOQ_TARGET_PROCESSES
                and t.per_action >= 10_000
            ):
                found.append(
                    Target(
                        f"{t.label}, {t.processes} proc, {t.api}",
                        f">= {FIFOQ_TARGET_RATE:,.0f}/s",
                        f"{t.median:,.0f}/s",
                        t.median >= FIFOQ_TARGET_RATE,
                    )
                )
                found.append(
                    Target(
                        f"{t.label}, {t.processes} proc, {t.api} vs ceiling",
                        f">= {FIFOQ_TARGET_RATIO:.0%}",
                        f"{t.ratio:.0%} of {t.ceiling_median:,.0f}/s",
                        t.ratio >= FIFOQ_TARGET_RATIO,
                    )
                )
        if self.handoff is not None:
            p99 = self.handoff.latency.p99
            found.append(
                Target(
                    "hand-off p99",
                    f"< {HANDOFF_P99_MS:g} ms",
                    f"{p99:.2f} ms",
                    p99 < HANDOFF_P99_MS,
                )
            )
        if self.cancel is not None:
            p50 = self.cancel.server.p50
            found.append(
                Target(
                    "cancel, server side (median)",
                    f"< {CANCEL_SERVER_MS:g} ms",
                    f"{p50:.3f} ms",
                    p50 < CANCEL_SERVER_MS,
                )
            )
        if self.stats is not None:
            s = self.stats
            worst = max(s.without_history.p50, s.with_history.p50)
            found.append(
                Target(
                    "refresh_stats (median)",
                    f"< {STATS_REFRESH_MS:g} ms",
                    f"{s.without_history.p50:.2f} / {s.with_history.p50:.2f} ms "
                    f"({s.without_history.p50 / s.floor.p50:.2f}x PostgreSQL's floor)",
                    worst < STATS_REFRESH_MS,
                )
            )
            ratio = s.with_history.p50 / s.without_history.p50
            found.append(
                Target(
                    f"refresh_stats flat with {s.history_rows:,} history",
                    f"<= {STATS_FLAT_RATIO:g}x",
                    f"{ratio:.2f}x",
                    ratio <= STATS_FLAT_RATIO,
                )
            )
        if self.storage is not None:
            per = self.storage.bytes_per_execution
            found.append(
                Target(
                    f"bytes per queued execution ({self.storage.queued:,})",
                    f"< {STORAGE_BYTES:g}",
                    f"{per:.0f}",
                    per < STORAGE_BYTES,
                )
            )
        return found

    def to_json(self) -> dict[str, Any]:
        """Every figure, as plain JSON values."""
        data: dict[str, Any] = {
            "machine": dataclasses.asdict(self.machine) if self.machine else None,
            "options": self.options,
            "seconds": round(self.seconds, 3),
            "load_average_end": self.load_average_end,
            "failure": self.failure,
            "throughput": [
                {
                    **dataclasses.asdict(t),
                    "executions": t.executions,
                    "median": t.median,
                    "ceiling_median": t.ceiling_median,
                    "ratio": t.ratio,
                    "lock_bound": t.lock_bound,
                    "bound_ratio": t.bound_ratio,
                    "unit": "executions/s (ceiling: insert+update pairs/s; lock_rates: "
                    "locked transactions/s, each with its flush)",
                }
                for t in self.throughput
            ],
            "handoff": _asdict(self.handoff),
            "cancel": _asdict(self.cancel),
            "stats": _asdict(self.stats),
            "storage": _asdict(self.storage),
            "targets": [dataclasses.asdict(t) for t in self.targets()],
            "latency_unit": "ms",
        }
        clean: dict[str, Any] = _finite(data)
        return clean


def _asdict(obj: Any) -> dict[str, Any] | None:
    return dataclasses.asdict(obj) if obj is not None else None


def _finite(value: Any) -> Any:
    """NaN and infinity become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(results: Results, path: Path) -> None:
    """Write every figure to ``path``."""
    path.write_text(json.dumps(results.to_json(), indent=2) + "\n", encoding="utf-8")


# -- terminal ---------------------------------------------------------------------


def print_machine(console: Console, machine: Machine) -> None:
    """The machine and server settings, as a two-column table."""
    table = Table(title="Machine", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in machine.rows():
        table.add_row(label, value)
    console.print(table)


def _ms(d: Distribution) -> tuple[str, str, str]:
    return (f"{d.p50:.3f}", f"{d.p99:.3f}", f"{d.max:.3f}")


def print_report(console: Console, results: Results) -> None:
    """The tables printed at the end of a run."""
    if results.throughput:
        runs = max(len(t.rates) for t in results.throughput)
        table = Table(
            title=f"Throughput, executions/s end to end (median of {runs} run{'s' * (runs > 1)})",
            title_justify="left",
        )
        columns = ("workload", "api", "limit", "processes", "fifoq", "ceiling", "ratio")
        for column in (*columns, "one-lock bound", "of bound", "runs"):
            table.add_column(column, justify="left" if column == "workload" else "right")
        for t in results.throughput:
            bound = (f"{t.lock_bound:,.0f}", f"{t.bound_ratio:.0%}") if t.lock_rates else ("-", "-")
            table.add_row(
                t.label,
                t.api,
                str(t.limit),
                str(t.processes),
                f"{t.median:,.0f}",
                f"{t.ceiling_median:,.0f}",
                f"{t.ratio:.0%}",
                *bound,
                " ".join(f"{r:,.0f}" for r in t.rates),
            )
        console.print(table)
        console.print(
            "  api: 'per call' runs enqueue_and_wait + complete for each execution in executor "
            "processes; 'batched' runs one producer process (enqueue_many, "
            f"{PRODUCER_BATCH} at a time) and that many fifoq.Worker processes, whose "
            "completions are grouped per statement.",
            style="dim",
        )
        console.print(
            "  ceiling: the same number of insert+update pairs (one commit each) from the same "
            "processes and connections, in the same database, just before. one-lock bound: half "
            "the rate of trivial transactions through one advisory lock held to an unflushed "
            "commit, each followed by a durable flush (fifoq runs two such state changes per "
            "execution on a queue), the most one queue allows",
            style="dim",
        )

    latency = Table(title="Latency and cost, ms", title_justify="left")
    for column in ("measure", "p50", "p99", "max", "n"):
        latency.add_column(column, justify="left" if column == "measure" else "right")
    if results.handoff is not None:
        h = results.handoff
        latency.add_row(
            "hand-off: commit -> next waiter returns"
            if h.from_commit
            else "hand-off: started_at (no commit timestamps) -> waiter returns",
            *_ms(h.latency),
            str(h.latency.n),
        )
        latency.add_row(
            "hand-off: started_at -> waiter returns", *_ms(h.from_started_at), str(h.rounds)
        )
    if results.cancel is not None:
        c = results.cancel
        latency.add_row("cancel: server side", *_ms(c.server), str(c.server.n))
        latency.add_row("cancel: client round trip", *_ms(c.round_trip), str(c.round_trip.n))
        latency.add_row(
            "cancel: commit -> waiter raises"
            if c.waiter_from_commit
            else "cancel: finished_at (no commit timestamps) -> waiter raises",
            *_ms(c.waiter),
            str(c.waiter.n),
        )
    if results.stats is not None:
        s = results.stats
        latency.add_row(
            f"refresh_stats, {s.actions} actions, server", *_ms(s.without_history), str(s.samples)
        )
        latency.add_row(
            f"  + {s.history_rows:,} finished, server", *_ms(s.with_history), str(s.samples)
        )
        latency.add_row(
            "  same-shape matview, plain REFRESH (floor)", *_ms(s.floor), str(s.floor.n)
        )
        latency.add_row(
            "refresh_stats round trip (commit incl.)",
            *_ms(s.without_history_round_trip),
            str(s.samples),
        )
        latency.add_row(
            f"  + {s.history_rows:,} finished", *_ms(s.with_history_round_trip), str(s.samples)
        )
    if latency.row_count:
        console.print(latency)
    if results.storage is not None:
        st = results.storage
        storage = Table(
            title=f"Storage per queued execution at {st.queued:,} queued (NULL payload)",
            title_justify="left",
        )
        storage.add_column("relation")
        storage.add_column("bytes", justify="right")
        for name, per in st.per_relation.items():
            storage.add_row(name, f"{per:.1f}")
        storage.add_row("total", f"{st.bytes_per_execution:.1f}", style="bold")
        console.print(storage)

    targets = results.targets()
    if targets:
        table = Table(title="Targets (benchmarks, not tests)", title_justify="left")
        for column in ("target", "goal", "measured", "verdict"):
            table.add_column(column)
        for target in targets:
            verdict = "[green]met[/]" if target.met else "[red]short[/]"
            table.add_row(target.name, target.goal, target.measured, verdict)
        console.print(table)
    if results.seconds:
        console.print(
            f"  run took {results.seconds:.0f} s; load average at the end "
            f"{results.load_average_end}",
            style="dim",
        )


# -- plot -------------------------------------------------------------------------


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def check_plot_available() -> None:
    """Raise ``PlotUnavailable`` with the install hint when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'fifoq[bench]'") from None


def write_plot(results: Results, path: Path) -> None:
    """Throughput against process count, one line per workload and limit, beside its ceiling."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    # first-seen order
    labels = list(dict.fromkeys(t.label for t in results.throughput))
    apis = list(dict.fromkeys(t.api for t in results.throughput))
    lines = [(label, api) for label in labels for api in apis]
    for i, (label, api) in enumerate(lines):
        points = sorted(
            (t for t in results.throughput if t.label == label and t.api == api),
            key=lambda t: t.processes,
        )
        if not points:
            continue
        xs = [t.processes for t in points]
        color = f"C{i}"
        left.plot(xs, [t.median for t in points], "o-", color=color, label=f"fifoq {label}, {api}")
        if api == apis[0]:  # the ceiling and the bound are shared by both apis
            left.plot(
                xs,
                [t.ceiling_median for t in points],
                "s--",
                color=color,
                alpha=0.5,
                label=f"ceiling ({label})",
            )
        if api == apis[0] and all(t.lock_rates for t in points):
            left.plot(
                xs,
                [t.lock_bound for t in points],
                "^:",
                color=color,
                alpha=0.7,
                label=f"one-lock bound ({label})",
            )
        right.plot(xs, [100 * t.ratio for t in points], "o-", color=color, label=f"{label}, {api}")
    left.axhline(FIFOQ_TARGET_RATE, color="grey", linestyle=":", label="target 3,000/s")
    right.axhline(100 * FIFOQ_TARGET_RATIO, color="grey", linestyle=":", label="target 50 %")
    left.set(title="Executions/s end to end", xlabel="executor processes", ylabel="executions/s")
    right.set(
        title="fifoq as % of the insert+update ceiling",
        xlabel="executor processes",
        ylabel="% of ceiling",
    )
    for ax in (left, right):
        ax.set_xticks(sorted({t.processes for t in results.throughput}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if results.machine is not None:
        m = results.machine
        fig.suptitle(
            f"fifoq bench: {m.cores} cores, {m.server_version}, fsync={m.fsync}, "
            f"synchronous_commit={m.synchronous_commit}",
            fontsize="medium",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
