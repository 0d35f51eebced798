"""`fifoq worker MODULE:APP`: run an App's handlers until SIGTERM or Ctrl-C."""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ..worker import AppLoadError, Worker, load_app
from ._common import (
    DebugOption,
    DsnOption,
    bad_value,
    check_reachable,
    connection_string,
    errors_handled,
    fail,
    run,
)

EPILOG = (
    "Example: fifoq worker myapp.tasks:app --concurrency 20 --actions core.deploy,core.build "
    "--grace 30"
)


class LogLevel(enum.StrEnum):
    """Logging thresholds."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: LogLevel, as_json: bool) -> None:
    """Log to stderr through ``logging``: fifoq at ``level``, libraries at warning."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fifoq").setLevel(level.value.upper())


def worker(
    app_spec: Annotated[
        str,
        typer.Argument(metavar="MODULE:APP", help="Where the fifoq.App is, e.g. myapp.tasks:app."),
    ],
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-c", metavar="N", min=1, help="At most N handlers at once."),
    ] = 10,
    actions: Annotated[
        str | None,
        typer.Option(
            "--actions",
            metavar="A,B",
            help="Run only these of the app's actions (comma-separated). Default: all.",
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            metavar="S",
            min=0,
            help="On SIGTERM/SIGINT: seconds running handlers get to finish before they are "
            "cancelled and handed back (marked abandoned).",
        ),
    ] = 30.0,
    keep_slot_under: Annotated[
        float,
        typer.Option(
            "--keep-slot-under",
            metavar="S",
            min=0,
            help="A handler that finished within S seconds keeps its slot: the next execution "
            "it admits comes straight to this worker with the completion (fast short work); "
            "slower handlers' slots are offered to every worker. 0: always offer.",
        ),
    ] = 0.1,
    no_policies: Annotated[
        bool,
        typer.Option("--no-policies", help="Do not set the app's policies on start."),
    ] = False,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Threshold of fifoq's log messages.")
    ] = LogLevel.info,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log one JSON object per line.")
    ] = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Run the handlers of an App for admitted executions, in FIFO order per queue.

    Starting applies the app's policies. Any number of workers may share one
    database. SIGTERM or Ctrl-C stops taking work and lets running handlers
    finish within --grace seconds; a second signal cancels them at once.
    """
    try:
        app = load_app(app_spec)
    except AppLoadError as exc:
        bad_value("MODULE:APP", str(exc))
    except (Exception, SystemExit) as exc:
        # SystemExit too: a module that calls sys.exit() while imported
        # would otherwise end the worker with no word of why.
        if debug:
            raise
        fail(f"could not import {app_spec!r}: {type(exc).__name__}: {exc}")
    selected = [a.strip() for a in actions.split(",") if a.strip()] if actions else None
    if actions is not None and not selected:
        bad_value("--actions", "names no action")
    conninfo = connection_string(dsn)
    try:
        runner = Worker(
            app,
            conninfo,
            concurrency=concurrency,
            actions=selected,
            grace=grace,
            apply_policies=not no_policies,
            keep_slot_under=keep_slot_under,
        )
    except ValueError as exc:
        bad_value("--actions" if selected else "MODULE:APP", str(exc))

    # Only now: usage errors above leave the process's logging alone.
    setup_logging(LogLevel.debug if debug else log_level, log_json)

    async def go() -> None:
        await check_reachable(conninfo)
        await runner.run(handle_signals=True)
        if runner.stuck:
            # Handlers that ignore cancellation would keep asyncio.run() (and
            # so this process) waiting for them; their executions are already
            # handed back, so leave now.
            logging.shutdown()
            os._exit(0)

    with errors_handled(debug, conninfo):
        run(go(), debug=debug, dsn=conninfo)


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``fifoq`` app."""
    app.command(
        "worker", epilog=EPILOG, short_help="Run an App's handlers for admitted executions."
    )(worker)
