"""Schema migrations: yoyo applies the SQL files of the top-level ``sql/`` folder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from yoyo import read_migrations  # type: ignore[import-untyped]
from yoyo.backends.core.postgresql import (  # type: ignore[import-untyped]
    PostgresqlPsycopgBackend,
)

__all__ = [
    "executor_role_sql",
    "grant_executor_role",
    "migrate",
    "migrations_dir",
    "pending_sql",
    "rollback",
]

SCHEMA = "fifoq"
# yoyo's bookkeeping tables live in the fifoq schema too, so that
# "everything in schema fifoq" holds and a rollback leaves nothing behind.
_MIGRATION_TABLE = "_yoyo_migration"
# Serialises concurrent `fifoq migrate` runs (two workers starting at once).
_MIGRATE_LOCK = (1718183540, 0)


def migrations_dir() -> Path:
    """Folder of the migration files: shipped in the wheel, or ``sql/`` of a checkout."""
    shipped = Path(__file__).resolve().parent / "_migrations"
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parent.parent / "sql"


@dataclass(frozen=True)
class _Target:
    """What yoyo keeps as the backend's "URI": our conninfo (picklable, has ``database``)."""

    conninfo: str
    database: str = ""


class _ConninfoBackend(PostgresqlPsycopgBackend):  # type: ignore[misc]
    """yoyo's psycopg 3 backend, connecting with a libpq conninfo instead of a yoyo URI."""

    def connect(self, dburi: Any) -> psycopg.Connection[Any]:
        self.schema = SCHEMA
        return psycopg.connect(dburi.conninfo, autocommit=True)


def _backend(conninfo: str) -> Any:
    backend = _ConninfoBackend(_Target(conninfo), _MIGRATION_TABLE)
    backend.init_database()
    return backend


def _schema_statements() -> list[sql.Composed]:
    """What creates schema fifoq before the first migration (run by migrate, shown by --sql)."""
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
            sql.Identifier(SCHEMA),
            sql.Literal("fifoq: FIFO execution queues with per-action concurrency limits"),
        ),
    ]


def _prepare_schema(conn: psycopg.Connection[Any]) -> None:
    for statement in _schema_statements():
        conn.execute(statement)


def migrate(conninfo: str = "") -> list[str]:
    """Apply every pending migration (idempotent). Empty conninfo uses the PG* variables.

    Returns the names of the migrations this call applied, as found under the
    lock: a concurrent run that got there first leaves this one nothing.
    """
    with psycopg.connect(conninfo, autocommit=True) as guard:
        guard.execute("SELECT pg_advisory_lock(%s, %s)", _MIGRATE_LOCK)
        # Under the lock: two concurrent CREATE SCHEMA IF NOT EXISTS can both
        # miss the other's schema, and one then fails on a unique violation.
        _prepare_schema(guard)
        with _yoyo_session(conninfo) as (backend, migrations):
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        _describe_bookkeeping(guard)
    return [m.id for m in todo]


@contextlib.contextmanager
def _yoyo_session(conninfo: str) -> Iterator[tuple[Any, Any]]:
    """yoyo's backend with its lock held, and every migration of ``migrations_dir()``."""
    backend = _backend(conninfo)
    try:
        with backend.lock():
            yield backend, read_migrations(str(migrations_dir()))
    finally:
        backend.connection.close()


# yoyo creates its tables without comments; SPEC §5 wants every table in the
# schema explained by `\d+`.
_BOOKKEEPING = {
    _MIGRATION_TABLE: "yoyo bookkeeping: the fifoq migrations (sql/*.sql) applied here, with when.",
    "_yoyo_log": "yoyo bookkeeping: each apply and rollback of a fifoq migration, by whom, when.",
    "_yoyo_version": "yoyo bookkeeping: the version of yoyo's own table layout.",
    "yoyo_lock": "yoyo bookkeeping: held while migrations run, so that two runs do not interleave.",
}


def _describe_bookkeeping(conn: psycopg.Connection[Any]) -> None:
    # Only where the comment is missing: once set, a migrate with nothing to
    # do writes nothing (and needs no ownership of yoyo's tables).
    missing = conn.execute(
        "SELECT t.name, t.text FROM unnest(%s::text[], %s::text[]) AS t(name, text)"
        " WHERE to_regclass(%s || '.' || t.name) IS NOT NULL"
        "   AND obj_description(to_regclass(%s || '.' || t.name), 'pg_class')"
        "       IS DISTINCT FROM t.text",
        (list(_BOOKKEEPING), list(_BOOKKEEPING.values()), SCHEMA, SCHEMA),
    ).fetchall()
    for table, text in missing:
        conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                sql.Identifier(SCHEMA, table), sql.Literal(text)
            )
        )


def rollback(conninfo: str = "") -> list[str]:
    """Revert every applied migration and drop the (then empty) fifoq schema.

    Returns the names of the migrations reverted, newest first: empty when
    there was nothing to revert (idempotent, like :func:`migrate`).
    """
    with psycopg.connect(conninfo, autocommit=True) as guard:
        exists = guard.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
        ).fetchone()
        if not exists:
            return []
        guard.execute("SELECT pg_advisory_lock(%s, %s)", _MIGRATE_LOCK)
        with _yoyo_session(conninfo) as (backend, migrations):
            todo = backend.to_rollback(migrations)
            backend.rollback_migrations(todo)
        guard.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
    return [m.id for m in todo]


def pending_sql(conninfo: str = "", *, rollback: bool = False) -> str:
    """The SQL that ``migrate`` (or ``rollback``) would run, without running it."""
    files: list[Path] = []
    applied: set[str] = set()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        schema_exists = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
        ).fetchone()
        has_table = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{_MIGRATION_TABLE}",)
        ).fetchone()
        if has_table and has_table[0]:
            rows = conn.execute(
                sql.SQL("SELECT migration_id FROM {}.{}").format(
                    sql.Identifier(SCHEMA), sql.Identifier(_MIGRATION_TABLE)
                )
            ).fetchall()
            applied = {r[0] for r in rows}
    all_files = sorted(
        p for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql")
    )
    if rollback:
        files = [
            p.with_name(p.stem + ".rollback.sql") for p in reversed(all_files) if p.stem in applied
        ]
    else:
        files = [p for p in all_files if p.stem not in applied]
    parts = [f"-- {p.name}\n{p.read_text(encoding='utf-8')}" for p in files]
    if not rollback and not schema_exists:
        # What migrate() runs first: the migrations create their objects in it.
        create = "".join(f"{statement.as_string()};\n" for statement in _schema_statements())
        parts.insert(0, f"-- first, schema {SCHEMA}:\n{create}")
    if rollback and schema_exists:
        # What rollback() runs last, once the migrations are reverted.
        drop = sql.SQL("DROP SCHEMA {} CASCADE;").format(sql.Identifier(SCHEMA)).as_string()
        parts.append(f"-- then, schema {SCHEMA} and everything left in it:\n{drop}\n")
    return "\n".join(parts)


def executor_role_sql() -> str:
    """The SQL of the least-privilege group role ``fifoq_executor`` (shipped in the package)."""
    return files("fifoq").joinpath("executor_role.sql").read_text(encoding="utf-8")


def grant_executor_role(conninfo: str = "") -> None:
    """Create (or bring up to date) the group role ``fifoq_executor`` and its grants.

    Idempotent; run it as the schema's owner with CREATEROLE (or a superuser)
    after every migration. One transaction: all of it or nothing.
    """
    with psycopg.connect(conninfo) as conn:
        # A constant file of ours, several statements, no parameters.
        conn.execute(executor_role_sql().encode())
