"""The ``fifoq`` command line (SPEC §6): typer commands, rich output."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any

import typer

from .. import __version__
from . import demo, executions, line, migrate, policy, purge, stats, worker
from ._common import DEBUG_ENV, pass_on
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
    rich_markup_mode=None,
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
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Also accepted before the command: fifoq --debug stats."),
    ] = False,
) -> None:
    """FIFO execution queues with per-action concurrency limits, kept in PostgreSQL."""
    # The pool's own warnings (a connection the server closed, discarded and
    # replaced) are no news to a one-shot command, and without a handler
    # Python would print them bare. `fifoq worker` logs them: its handler sits
    # on the root logger, which they still reach.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    pass_on(dsn, debug)


migrate.register(app)
app.add_typer(policy.policy_app)
executions.register(app)
line.register(app)
stats.register(app)
worker.register(app)
demo.register(app)
purge.register(app)
app.command("bench", short_help="Measure throughput, latencies, stats cost and storage.")(bench)


# click's exception classes (typer vendors click in newer releases, imports it
# in older ones): found through the one typer exports, not a private module.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


def main() -> None:
    """Entry point of the ``fifoq`` console script.

    Exit status 0 ok, 1 runtime error, 2 usage error or bad value, each error
    as one line on stderr (``fifoq: error: ...``): click's own rendering of a
    usage error is a box of five lines or more.
    """
    from ._common import fail

    try:
        try:
            code = app(prog_name="fifoq", standalone_mode=False)
        except _UsageError as usage:
            exc: Any = usage  # a click UsageError: show(), format_message(), ctx
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `fifoq` or group: the help
                exc.show()
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            fail(f"{exc.format_message()}{hint}", code=exc.exit_code)
        except _ClickException as other:
            click_error: Any = other
            fail(click_error.format_message(), code=click_error.exit_code)
        except typer.Abort:
            fail("aborted")
        except Exception as exc:
            # Commands map their own errors; this catches what escapes one (bench).
            if "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV):
                raise
            fail(f"{type(exc).__name__}: {exc}")
    except typer.Exit as done:
        sys.exit(done.exit_code)
    # Without standalone mode click returns the code of an explicit exit
    # (typer.Exit, --help, --version) and a command's return value (None).
    sys.exit(code if isinstance(code, int) else 0)
