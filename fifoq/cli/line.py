"""`fifoq list`: an action's running executions and its waiting line, in start order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ..models import Execution, QueueStats, Status
from ..validation import MAX_BATCH, check_action, check_group
from ._common import (
    DebugOption,
    DsnOption,
    JsonOption,
    connect,
    connection_string,
    console,
    errors_handled,
    format_age,
    print_json,
    run,
    terminal_safe,
    to_jsonable,
)

EPILOG = "Example: fifoq list core.deploy;  fifoq list core.deploy --group web-1 --json"

# Payloads are cut to this many characters in the table (--json has them whole).
PAYLOAD_CHARS = 48


def summary(
    action: str, executions: list[Execution], limit: int, totals: list[QueueStats] | None
) -> str:
    """One line above the table: how many are active and waiting, and how many are shown.

    A listing shorter than ``limit`` is everything live, so it is counted
    itself and the line cannot contradict the table. A full one is counted
    from ``totals`` (the queues' counters, read just after), never as fewer
    than the rows shown.
    """
    shown_active = sum(1 for e in executions if e.status is not Status.QUEUED)
    shown_waiting = len(executions) - shown_active
    if totals is None or len(executions) < limit:
        active, waiting = shown_active, shown_waiting
    else:
        active = max(sum(row.active_count for row in totals), shown_active)
        waiting = max(sum(row.queue_length for row in totals), shown_waiting)
    text = f"{action}: {active:,} active, {waiting:,} waiting"
    if len(executions) < active + waiting:
        text += f" (first {len(executions):,} shown"
        text += "; --limit shows more)" if limit < MAX_BATCH else ")"
    return text


def line_table(executions: list[Execution], now: datetime) -> Table:
    """A rich table of an action's live executions, in the order of the listing.

    Cells are plain text (never rich markup: payloads and group names are
    the users'); on a narrow terminal the payload column gives way first.
    """
    table = Table()
    # group and payload are the columns that may narrow (not no_wrap); their
    # cells stay on one line and end in "…" when cut. The others never narrow.
    table.add_column("group", max_width=24)
    for name in ("seq", "id"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("place", justify="right", no_wrap=True)
    table.add_column("for", justify="right", no_wrap=True)
    table.add_column("owner", justify="right", no_wrap=True)
    table.add_column("payload")
    for execution, place in zip(executions, places(executions), strict=True):
        since: datetime | None
        if place is not None:
            where, since = str(place), execution.enqueued_at
        else:
            where, since = "-", execution.started_at
        table.add_row(
            _one_line(terminal_safe(execution.group or "-")),
            *(
                Text(cell)
                for cell in (
                    str(execution.seq),
                    str(execution.id),
                    str(execution.status),
                    where,
                    format_age(since, now),
                    "-" if execution.owner is None else str(execution.owner),
                )
            ),
            _one_line(_short(execution.payload)),
        )
    if not executions:
        table.caption = "nothing active or waiting"
    return table


def places(executions: list[Execution]) -> list[int | None]:
    """Each execution's place in its group's waiting line (1 starts next); None if active.

    ``executions`` in the listing's order: per group, the active ones, then
    the line in start order.
    """
    seen: dict[str | None, int] = {}
    out: list[int | None] = []
    for execution in executions:
        if execution.status is Status.QUEUED:
            seen[execution.group] = seen.get(execution.group, 0) + 1
            out.append(seen[execution.group])
        else:
            out.append(None)
    return out


def _one_line(text: str) -> Text:
    # Plain text (no markup), cut with "…" to the column's width.
    return Text(text, no_wrap=True, overflow="ellipsis")


def _short(payload: Any) -> str:
    if payload is None:
        return "-"
    text = terminal_safe(json.dumps(payload, ensure_ascii=False))
    return text if len(text) <= PAYLOAD_CHARS else text[: PAYLOAD_CHARS - 1] + "…"


def list_line(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="Action name, e.g. core.deploy.")],
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="G",
            help="Only this group's queue ('' for the default group; default: all groups).",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", metavar="N", help="Show at most N executions.", min=1, max=MAX_BATCH
        ),
    ] = 100,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Show an action's active executions, then its waiting line in the order it will start.

    'place' is the position in its group's line (1 starts next); 'for' is
    how long it has been running, or waiting. Finished executions are not
    listed: `fifoq get ID` shows one.
    """
    with errors_handled(debug):
        check_action(action)
        check_group(group)
    conninfo = connection_string(dsn)

    async def go() -> tuple[list[Execution], list[QueueStats] | None]:
        async with connect(conninfo, "list") as qm:
            executions = await qm.list_executions(action, group=group, limit=limit)
            # Only a full listing needs the counters to say how much it left out.
            if as_json or len(executions) < limit:
                return executions, None
            return executions, await qm.live_stats(action, group=group)

    executions, totals = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json(
            [
                {**to_jsonable(execution), "place": place}
                for execution, place in zip(executions, places(executions), strict=True)
            ]
        )
    else:
        out = console()
        out.print(summary(action, executions, limit, totals), markup=False, highlight=False)
        out.print(line_table(executions, datetime.now(UTC)))


def register(app: typer.Typer) -> None:
    """Add ``list`` to the ``fifoq`` app."""
    app.command(
        "list",
        epilog=EPILOG,
        short_help="Show an action's active executions and waiting line.",
    )(list_line)
