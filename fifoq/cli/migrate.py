"""`fifoq migrate`: install, show or roll back the schema."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from ..migrations import migrate as apply_migrations
from ..migrations import pending_sql
from ..migrations import rollback as rollback_migrations
from ._common import DebugOption, DsnOption, connection_string, errors_handled

EPILOG = (
    "Example: fifoq migrate --dsn postgresql://me@db/app;  "
    "fifoq migrate --sql > pending.sql (review, then run with psql)"
)

_FILE_HEADER = re.compile(r"^-- (\S+\.sql)$", re.MULTILINE)


def _names(sql_text: str) -> list[str]:
    return [name.removesuffix(".sql") for name in _FILE_HEADER.findall(sql_text)]


def migrate(
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL that would run, and change nothing.")
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback", help="Revert every migration and drop schema fifoq (all data in it)."
        ),
    ] = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Apply the pending schema migrations (idempotent; safe to run from many hosts at once)."""
    conninfo = connection_string(dsn)
    with errors_handled(debug, conninfo):
        todo = pending_sql(conninfo, rollback=rollback)
        if sql:
            if todo:
                typer.echo(todo)
            else:
                typer.echo("-- nothing to do", err=True)
            return
        names = _names(todo)
        if rollback:
            rollback_migrations(conninfo)
            reverted = ", ".join(names) or "none applied"
            typer.echo(f"rolled back {len(names)} migration(s) ({reverted}); schema fifoq dropped")
        else:
            apply_migrations(conninfo)
            if names:
                typer.echo(f"applied {len(names)} migration(s): {', '.join(names)}")
            else:
                typer.echo("schema fifoq is up to date")


def register(app: typer.Typer) -> None:
    """Add ``migrate`` to the ``fifoq`` app."""
    app.command("migrate", epilog=EPILOG)(migrate)
