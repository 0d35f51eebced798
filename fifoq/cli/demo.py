"""`fifoq demo`: the demo scenario of fifoq/demo.py on an embedded or given PostgreSQL."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import DebugOption, console, dsn_option, errors_handled, fail

EPILOG = (
    "Example: fifoq demo;  fifoq demo --executions 10000 --workers 4;  "
    "fifoq demo --dsn postgresql://me@localhost/scratch (keeps the data for psql)"
)


def demo(
    executions: Annotated[
        int,
        typer.Option("--executions", "-n", metavar="N", min=1, help="Executions to enqueue."),
    ] = 3000,
    workers: Annotated[
        int, typer.Option("--workers", "-w", metavar="W", min=1, help="Worker processes.")
    ] = 3,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", metavar="C", min=1, help="Handlers at once per worker."),
    ] = 8,
    dsn: Annotated[
        str | None,
        dsn_option(
            "Run on this server instead, and keep the demo's data there (demo.* policies "
            "and executions). Default: $FIFOQ_DSN, else a throwaway embedded PostgreSQL, removed "
            "afterwards (the libpq PG* variables are not used)."
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Run several workers on a few thousand executions, watch them live, then check the result.

    Without --dsn or $FIFOQ_DSN a throwaway PostgreSQL is started from the
    server binaries on this machine and removed afterwards; with one, the
    demo runs there and leaves its data. At the end the
    demo checks from the database that no queue ever exceeded its limit and
    every queue started in FIFO order; exit status 1 if not.
    """
    from ..demo import DemoOptions, run_demo
    from ..embedded import EmbeddedPostgresError

    options = DemoOptions(executions=executions, workers=workers, concurrency=concurrency)
    with errors_handled(debug, dsn or ""):
        try:
            code = run_demo(dsn or None, options, console())
        except (EmbeddedPostgresError, TimeoutError, RuntimeError) as exc:
            if debug:
                raise
            fail(str(exc))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``fifoq`` app."""
    app.command(
        "demo", epilog=EPILOG, short_help="Run a live multi-process demo, then check the result."
    )(demo)
