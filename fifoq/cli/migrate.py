"""`fifoq migrate`: install, show or roll back the schema."""

from __future__ import annotations

from typing import Annotated

import typer

from ..migrations import executor_role_sql, grant_executor_role, pending_sql
from ..migrations import migrate as apply_migrations
from ..migrations import rollback as rollback_migrations
from ._common import DebugOption, DsnOption, bad_value, connection_string, errors_handled

EPILOG = (
    "Example: fifoq migrate --dsn postgresql://me@db/app;  "
    "fifoq migrate --sql | less   (review what would run, then: fifoq migrate);  "
    "fifoq migrate --executor-role   (then: CREATE ROLE app LOGIN ... IN ROLE fifoq_executor)"
)

_REVIEW_HEADER = (
    "-- For review: the migrations `{command}` would {verb}, in order. Run that\n"
    "-- command to do it: it records each migration in fifoq._yoyo_migration and holds\n"
    "-- the locks that keep concurrent runs apart; this text run by psql would not.\n"
)


def migrate(
    sql: Annotated[
        bool,
        typer.Option(
            "--sql",
            help="Print the SQL that would run, for review, and change nothing. Apply it with "
            "`fifoq migrate`, which also records each migration; the text alone, run by psql, "
            "would not.",
        ),
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback", help="Revert every migration and drop schema fifoq (all data in it)."
        ),
    ] = False,
    executor_role: Annotated[
        bool,
        typer.Option(
            "--executor-role",
            help="After migrating, create or update the least-privilege group role "
            "fifoq_executor (needs CREATEROLE; idempotent). With --sql: print its SQL.",
        ),
    ] = False,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Apply the pending schema migrations (idempotent; safe to run from many hosts at once)."""
    if executor_role and rollback:
        bad_value("--executor-role", "cannot be combined with --rollback")
    conninfo = connection_string(dsn)
    with errors_handled(debug, conninfo):
        if sql and executor_role:
            typer.echo(executor_role_sql())
            return
        if sql:
            todo = pending_sql(conninfo, rollback=rollback)
            if todo:
                command = "fifoq migrate --rollback" if rollback else "fifoq migrate"
                verb = "roll back" if rollback else "apply"
                typer.echo(_REVIEW_HEADER.format(command=command, verb=verb))
                typer.echo(todo)
            else:
                typer.echo("-- nothing to do", err=True)
            return
        # What each run did, as found under the migration lock: of several
        # concurrent runs, one applies and the others find nothing to do.
        if rollback:
            reverted = rollback_migrations(conninfo)
            if not reverted:
                typer.echo("nothing to roll back: no fifoq migration is applied")
            else:
                typer.echo(
                    f"rolled back {len(reverted)} migration(s) ({', '.join(reverted)}); "
                    "schema fifoq dropped"
                )
        else:
            applied = apply_migrations(conninfo)
            if applied:
                typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
            else:
                typer.echo("schema fifoq is up to date")
            if executor_role:
                grant_executor_role(conninfo)
                typer.echo(
                    "role fifoq_executor has what fifoq needs; give it to a login role: "
                    "CREATE ROLE app LOGIN PASSWORD '...' IN ROLE fifoq_executor"
                )


def register(app: typer.Typer) -> None:
    """Add ``migrate`` to the ``fifoq`` app."""
    app.command(
        "migrate", epilog=EPILOG, short_help="Apply the pending schema migrations (idempotent)."
    )(migrate)
