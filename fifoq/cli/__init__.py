"""The ``fifoq`` command line (SPEC §6): typer commands, rich output."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from .. import __version__
from ..dsn import DSN_ENV
from . import demo, executions, migrate, policy, purge, stats, worker
from .bench import bench

__all__ = ["app", "main"]

app = typer.Typer(
    name="fifoq",
    help="fifoq: FIFO execution queues with per-action concurrency limits, kept in PostgreSQL.\n\n"
    "Every command takes --dsn (else $FIFOQ_DSN, else the libpq PG* variables) and --debug. "
    "Exit status: 0 ok, 1 runtime error (one line on stderr), 2 usage error.",
    epilog="Example: fifoq migrate && fifoq policy set core.deploy --max-concurrent 2 && "
    'fifoq enqueue core.deploy --payload \'{"host": "a"}\' && fifoq stats',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fifoq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            metavar="CONNINFO",
            help="Also accepted before the command: fifoq --dsn URI stats.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """FIFO execution queues with per-action concurrency limits, kept in PostgreSQL."""
    if dsn is not None:
        # Every command reads $FIFOQ_DSN when it gets no --dsn of its own, and
        # typer parses the command's options after this callback has run.
        os.environ[DSN_ENV] = dsn


migrate.register(app)
app.add_typer(policy.policy_app)
executions.register(app)
stats.register(app)
worker.register(app)
demo.register(app)
purge.register(app)
app.command("bench")(bench)


def main() -> None:
    """Entry point of the ``fifoq`` console script."""
    try:
        app(prog_name="fifoq")
    except Exception as exc:
        # Commands map their own errors; this catches what escapes one (bench).
        if "--debug" in sys.argv[1:]:
            raise
        from ._common import fail

        try:
            fail(f"{type(exc).__name__}: {exc}")
        except typer.Exit as done:
            sys.exit(done.exit_code)
