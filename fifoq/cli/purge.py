"""`fifoq purge`: retention of finished executions and ended executors."""

from __future__ import annotations

from typing import Annotated

import typer

from ..models import Purged
from ._common import (
    DebugOption,
    DsnOption,
    JsonOption,
    connect,
    connection_string,
    parse_duration,
    print_json,
    run,
)

EPILOG = "Example: fifoq purge --older-than 7d  (from cron, say nightly)"


def purge(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Delete what finished longer ago than this: 90s, 15m, 12h, 7d, 2w.",
        ),
    ],
    batch: Annotated[
        int,
        typer.Option(
            "--batch", metavar="N", min=1, max=2**31 - 1, help="Rows deleted per transaction."
        ),
    ] = 10_000,
    as_json: JsonOption = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Delete finished executions (and ended executors) older than a duration.

    Queued and active executions are never touched, and statistics keep their
    totals. Runs in batches of short transactions until nothing older is left.
    """
    age = parse_duration("--older-than", older_than)
    conninfo = connection_string(dsn)

    async def go() -> Purged:
        executions = executors = 0
        async with connect(conninfo, "purge") as qm:
            while True:
                done = await qm.purge(age, limit=batch)
                executions += done.executions
                executors += done.executors
                if done.executions < batch:
                    return Purged(executions=executions, executors=executors)

    total = run(go(), debug=debug, dsn=conninfo)
    if as_json:
        print_json(total)
    else:
        typer.echo(
            f"purged {total.executions} finished execution(s) and {total.executors} ended "
            f"executor(s) older than {older_than}"
        )


def register(app: typer.Typer) -> None:
    """Add ``purge`` to the ``fifoq`` app."""
    app.command(
        "purge", epilog=EPILOG, short_help="Delete finished executions older than a duration."
    )(purge)
