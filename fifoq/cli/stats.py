"""`fifoq stats`: per-queue statistics as a table, JSON, or a live view."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..manager import QueueManager
from ..models import QueueStats
from ..validation import check_action, check_group
from ._common import (
    DebugOption,
    DsnOption,
    JsonOption,
    bad_value,
    connect,
    connection_string,
    console,
    errors_handled,
    format_age,
    print_json,
    run,
    to_jsonable,
)

EPILOG = (
    "Example: fifoq stats;  fifoq stats core.deploy --json;  fifoq stats --watch --interval 0.5"
)


async def fetch(
    qm: QueueManager, action: str | None, group: str | None, *, snapshot: bool
) -> list[QueueStats]:
    """The statistics to show: every queue, or the queues of one action (and group)."""
    if not snapshot:
        rows = await qm.live_stats(action, group=group)  # filtered in SQL
        if not rows and action is not None:
            rows = [await qm.stats(action, group=group)]  # zeros: never used yet
        return rows
    await qm.refresh_stats()
    rows = await qm.snapshot_stats()
    if action is not None:
        rows = [r for r in rows if r.action == action]
        if group is not None:
            rows = [r for r in rows if (r.group or "") == group]
    return rows


def _done(row: QueueStats) -> int:
    return row.total_completed + row.total_cancelled + row.total_timed_out + row.total_abandoned


@dataclass
class Throughput:
    """Finished executions per second per queue, over the last few samples."""

    window: float = 3.0
    samples: dict[tuple[str, str], list[tuple[float, int]]] = field(default_factory=dict)

    def update(
        self, rows: list[QueueStats], now: float | None = None
    ) -> dict[tuple[str, str], float]:
        """Record the done counts of ``rows``; return each queue's rate."""
        now = time.monotonic() if now is None else now
        rates: dict[tuple[str, str], float] = {}
        for row in rows:
            key = (row.action, row.group or "")
            history = self.samples.setdefault(key, [])
            history.append((now, _done(row)))
            while len(history) > 2 and now - history[1][0] >= self.window:
                history.pop(0)
            (t0, d0), (t1, d1) = history[0], history[-1]
            rates[key] = (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0
        return rates


def stats_table(
    rows: list[QueueStats],
    rates: dict[tuple[str, str], float] | None = None,
    *,
    title: str | None = None,
) -> Table:
    """A rich table of queue statistics (with a done/s column when ``rates`` is given)."""
    table = Table(title=title, title_justify="left")
    table.add_column("action", no_wrap=True)
    table.add_column("group", no_wrap=True)
    for name in ("waiting", "active", "limit", "oldest wait", "enqueued", "completed"):
        table.add_column(name, justify="right")
    for name in ("failed", "cancelled", "timed out", "abandoned"):
        table.add_column(name, justify="right")
    if rates is not None:
        table.add_column("done/s", justify="right")
    for row in rows:
        cells = [
            row.action,
            row.group or "-",
            str(row.queue_length),
            str(row.active_count),
            "∞" if row.max_concurrent is None else str(row.max_concurrent),
            format_age(row.oldest_enqueued_at, row.last_updated),
            str(row.total_enqueued),
            str(row.total_completed),
            str(row.total_failed),
            str(row.total_cancelled),
            str(row.total_timed_out),
            str(row.total_abandoned),
        ]
        if rates is not None:
            cells.append(f"{rates.get((row.action, row.group or ''), 0.0):.0f}")
        # Text, not markup: action and group names are the users' ("[x]" is a valid group).
        table.add_row(*(Text(cell) for cell in cells))
    if not rows:
        table.caption = "no queues yet: nothing was enqueued"
    return table


def stats(
    action: Annotated[
        str | None,
        typer.Argument(
            metavar="ACTION", help="Show only this action's queues.", show_default=False
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", metavar="G", help="With ACTION: only this group.")
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Refresh the materialized view fifoq.queue_stats and show it "
            "(default: the live view).",
        ),
    ] = False,
    as_json: JsonOption = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Redraw every --interval seconds until Ctrl-C."),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", metavar="S", help="Seconds between redraws.", min=0.05)
    ] = 1.0,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Show per-queue statistics: waiting, active, limit, totals.

    With --json the rows are printed as a JSON array (with --watch: one
    compact JSON array per line, per interval).
    """
    if group is not None and action is None:
        bad_value("--group", "needs ACTION")
    with errors_handled(debug):
        if action is not None:
            check_action(action)
        check_group(group)
    conninfo = connection_string(dsn)

    if not watch:

        async def once() -> list[QueueStats]:
            async with connect(conninfo, "stats") as qm:
                return await fetch(qm, action, group, snapshot=refresh)

        rows = run(once(), debug=debug, dsn=conninfo)
        if as_json:
            print_json(rows)
        else:
            title = "fifoq.queue_stats (just refreshed)" if refresh else "live queue statistics"
            console().print(stats_table(rows, title=title))
        return

    async def forever() -> None:
        throughput = Throughput()

        def frame(rows: list[QueueStats]) -> Table:
            rates: dict[Any, float] = throughput.update(rows)
            stamp = datetime.now().astimezone().strftime("%H:%M:%S")
            return stats_table(rows, rates, title=f"fifoq stats at {stamp} (Ctrl-C to stop)")

        async with connect(conninfo, "stats --watch") as qm:

            async def every_interval() -> AsyncIterator[list[QueueStats]]:
                while True:
                    yield await fetch(qm, action, group, snapshot=refresh)
                    await asyncio.sleep(interval)

            ticks = every_interval()
            if as_json:
                async for rows in ticks:
                    print_json([to_jsonable(r) for r in rows], compact=True)
            # The first frame exists before Live starts, so even an immediate
            # Ctrl-C leaves a table behind (Live prints its last frame on exit).
            first = frame(await anext(ticks))
            out = console()
            if not out.is_terminal:
                # Into a file or a pipe: one frame after another, as they come
                # (Live would keep them back and write only the last).
                out.print(first)
                async for rows in ticks:
                    out.print(frame(rows))
                    out.file.flush()
            with Live(first, console=out, auto_refresh=False) as live:
                async for rows in ticks:
                    live.update(frame(rows), refresh=True)

    async def until_stopped() -> None:
        # SIGTERM ends the watch as Ctrl-C does: through the task's
        # cancellation, so that Live restores the terminal's cursor.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await forever()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
        run(until_stopped(), debug=debug, dsn=conninfo)


def register(app: typer.Typer) -> None:
    """Add ``stats`` to the ``fifoq`` app."""
    app.command("stats", epilog=EPILOG)(stats)
