"""`fifoq list`: an action's running executions and its waiting line, in start order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from ..manager import QueueManager
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
)
from .stats import fetch

EPILOG = "Example: fifoq list core.deploy;  fifoq list core.deploy --group web-1 --json"

# Payloads are cut to this many characters in the table (--json has them whole).
PAYLOAD_CHARS = 48


def summary(action: str, shown: int, totals: list[QueueStats]) -> str:
    """One line above the table: how many are active and waiting, and how many are shown."""
    active = sum(row.active_count for row in totals)
    waiting = sum(row.queue_length for row in totals)
    text = f"{action}: {active:,} active, {waiting:,} waiting"
    if shown < active + waiting:
        text += f" (first {shown:,} shown; --limit shows more)"
    return text


def line_table(executions: list[Execution], now: datetime) -> Table:
    """A rich table of an action's live executions, in the order of the listing."""
    table = Table()
    table.add_column("group", no_wrap=True)
    for name in ("seq", "id"):
        table.add_column(name, justify="right")
    table.add_column("status")
    table.add_column("place", justify="right")
    table.add_column("for", justify="right")
    table.add_column("owner", justify="right")
    table.add_column("payload", overflow="ellipsis", no_wrap=True)
    place: dict[str | None, int] = {}
    for execution in executions:
        since: datetime | None
        if execution.status is Status.QUEUED:
            place[execution.group] = place.get(execution.group, 0) + 1
            where = str(place[execution.group])
            since = execution.enqueued_at
        else:
            where, since = "-", execution.started_at
        table.add_row(
            execution.group or "-",
            str(execution.seq),
            str(execution.id),
            str(execution.status),
            where,
            format_age(since, now),
            "-" if execution.owner is None else str(execution.owner),
            _short(execution.payload),
        )
    if not executions:
        table.caption = "nothing active or waiting"
    return table


def _short(payload: Any) -> str:
    if payload is None:
        return "-"
    text = json.dumps(payload, ensure_ascii=False)
    return text if len(text) <= PAYLOAD_CHARS else text[: PAYLOAD_CHARS - 1] + "…"


def list_line(
    action: Annotated[str, typer.Argument(metavar="ACTION", help="Action name, e.g. core.deploy.")],
    group: Annotated[
        str | None,
        typer.Option("--group", metavar="G", help="Only this group's queue (default: all)."),
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

    async def go() -> tuple[list[Execution], list[QueueStats]]:
        async with connect(conninfo, "list") as qm:
            return await _read(qm, action, group, limit, totals=not as_json)

    executions, totals = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json(executions)
    else:
        out = console()
        out.print(summary(action, len(executions), totals), markup=False, highlight=False)
        out.print(line_table(executions, datetime.now(UTC)))


async def _read(
    qm: QueueManager, action: str, group: str | None, limit: int, *, totals: bool
) -> tuple[list[Execution], list[QueueStats]]:
    executions = await qm.list_executions(action, group=group, limit=limit)
    return executions, await fetch(qm, action, group, snapshot=False) if totals else []


def register(app: typer.Typer) -> None:
    """Add ``list`` to the ``fifoq`` app."""
    app.command(
        "list",
        epilog=EPILOG,
        short_help="Show an action's active executions and waiting line.",
    )(list_line)
