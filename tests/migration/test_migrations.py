"""Migrations: up, down and up again, idempotence, and the committed schema dump."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_until_sync
from psycopg import sql
from schema_dump import SCHEMA_FILE, dump_schema

import fifoq
from fifoq.migrations import migrations_dir, pending_sql


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A new database with nothing of fifoq in it, dropped afterwards."""
    name = f"test_empty_{uuid.uuid4().hex}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dump(pg_bindir: Path | None) -> str:
    """The pg_dump matching the server when we started it, else the one on PATH."""
    return str(pg_bindir / "pg_dump") if pg_bindir else "pg_dump"


def objects(dsn: str) -> dict[str, int]:
    """What exists in schema fifoq (and anywhere else, to catch leftovers)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'fifoq'),
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'fifoq'),
                   (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'fifoq'),
                   (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                     WHERE n.nspname = 'fifoq' AND t.typtype = 'e'),
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                       AND n.nspname <> 'fifoq')
            """
        ).fetchone()
    assert row is not None
    return dict(zip(("schema", "relations", "functions", "enums", "elsewhere"), row, strict=True))


async def works(dsn: str) -> None:
    """One round of the protocol on the migrated schema."""
    async with fifoq.QueueManager.connect(dsn) as qm:
        await qm.set_policy("mig.check", max_concurrent=1)
        first = await qm.enqueue("mig.check")
        second = await qm.enqueue("mig.check")
        await qm.complete(first.id)
        assert (await qm.get(second.id)).status is fifoq.Status.ACTIVE
        await qm.refresh_stats()
        assert [s.total_completed for s in await qm.snapshot_stats()] == [1]


def test_every_migration_has_a_rollback() -> None:
    folder = migrations_dir()
    ups = sorted(p.name for p in folder.glob("*.sql") if not p.name.endswith(".rollback.sql"))
    downs = sorted(p.name for p in folder.glob("*.rollback.sql"))
    assert ups, f"no migrations in {folder}"
    assert downs == [name.removesuffix(".sql") + ".rollback.sql" for name in ups]


def test_up_down_up_leaves_the_same_schema_and_it_works(empty_dsn: str, pg_dump: str) -> None:
    assert objects(empty_dsn)["schema"] == 0
    fifoq.migrate(empty_dsn)
    first = objects(empty_dsn)
    assert first["schema"] == 1 and first["relations"] > 10 and first["functions"] > 10
    assert first["elsewhere"] == 0  # yoyo's bookkeeping lives in schema fifoq too
    dumped = dump_schema(empty_dsn, pg_dump)
    asyncio.run(works(empty_dsn))

    fifoq.rollback(empty_dsn)
    gone = objects(empty_dsn)
    assert gone == {"schema": 0, "relations": 0, "functions": 0, "enums": 0, "elsewhere": 0}
    fifoq.rollback(empty_dsn)  # nothing left to roll back: a no-op

    fifoq.migrate(empty_dsn)
    assert objects(empty_dsn) == first
    assert dump_schema(empty_dsn, pg_dump) == dumped
    asyncio.run(works(empty_dsn))


def test_migrate_is_idempotent_and_keeps_data(empty_dsn: str) -> None:
    fifoq.migrate(empty_dsn)
    asyncio.run(works(empty_dsn))
    fifoq.migrate(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM fifoq.executions").fetchone()
    assert row == (2,)


def test_concurrent_migrations_both_succeed_and_one_applies(empty_dsn: str) -> None:
    errors: list[BaseException] = []
    applied: list[list[str]] = []

    def run() -> None:
        try:
            applied.append(fifoq.migrate(empty_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    asyncio.run(works(empty_dsn))
    # Each run reports what it did under the lock: one applied all, two none.
    every = sorted(
        p.stem for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql")
    )
    assert sorted(applied, key=len) == [[], [], every]
    reverted = fifoq.rollback(empty_dsn)
    assert reverted == list(reversed(every))
    assert fifoq.rollback(empty_dsn) == []  # no schema left: nothing to roll back, like migrate


def file_headers(text: str) -> list[str]:
    """The file names pending_sql puts above each file's text."""
    return re.findall(r"^-- (\d{4}_\w+(?:\.rollback)?\.sql)$", text, flags=re.MULTILINE)


def test_pending_sql_lists_what_would_run(empty_dsn: str) -> None:
    names = sorted(
        p.name for p in migrations_dir().glob("*.sql") if not p.name.endswith(".rollback.sql")
    )
    assert file_headers(pending_sql(empty_dsn)) == names
    assert objects(empty_dsn)["schema"] == 0  # printing ran nothing
    fifoq.migrate(empty_dsn)
    assert pending_sql(empty_dsn) == ""
    undo = pending_sql(empty_dsn, rollback=True)
    assert file_headers(undo) == [n.removesuffix(".sql") + ".rollback.sql" for n in reversed(names)]
    # rollback() also drops the schema: the listing says so, last.
    assert undo.rstrip().endswith('DROP SCHEMA "fifoq" CASCADE;')
    assert objects(empty_dsn)["schema"] == 1  # printing ran nothing


def test_migrated_schema_matches_the_committed_dump(empty_dsn: str, pg_dump: str) -> None:
    assert SCHEMA_FILE.exists(), f"{SCHEMA_FILE} is missing: run `make schema-dump`"
    fifoq.migrate(empty_dsn)
    actual = dump_schema(empty_dsn, pg_dump)
    expected = SCHEMA_FILE.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                "tests/schema.sql",
                "migrated database",
                n=2,
            )
        )
        pytest.fail(
            "the migrated schema differs from tests/schema.sql; if the change is meant, run "
            f"`make schema-dump` and commit the result:\n{diff[:6000]}"
        )


@contextlib.contextmanager
def _yoyo(dsn: str) -> Iterator[tuple[Any, Any]]:
    """yoyo's backend on ``dsn`` (schema fifoq made, lock held) and the migrations, in order."""
    from fifoq.migrations import _prepare_schema, _yoyo_session

    with psycopg.connect(dsn, autocommit=True) as conn:
        _prepare_schema(conn)
    with _yoyo_session(dsn) as (backend, migrations):
        yield backend, backend.to_apply(migrations)


def _migrate_through(dsn: str, last: str) -> None:
    """Apply the migrations up to and including ``last`` (an older schema to upgrade from)."""
    with _yoyo(dsn) as (backend, migrations):
        backend.apply_migrations(migrations.filter(lambda m: m.id <= last))


def test_each_rollback_restores_the_schema_its_migration_found(
    empty_dsn: str, pg_dump: str
) -> None:
    """Migration k+1 and then its rollback leave the schema exactly as after migration k.

    The whole chain up and down is checked above; this catches a rollback
    that restores its functions but not what a migration in between set on
    them (CREATE OR REPLACE FUNCTION resets a function's SET clauses).
    """
    with _yoyo(empty_dsn) as (backend, migrations):
        names = [m.id for m in migrations]
        after: list[str] = []
        for name in names:
            backend.apply_migrations(migrations.filter(lambda m, n=name: m.id == n))
            after.append(dump_schema(empty_dsn, pg_dump))
        for k in range(len(names) - 1, 0, -1):
            backend.rollback_migrations(migrations.filter(lambda m, n=names[k]: m.id == n))
            restored = dump_schema(empty_dsn, pg_dump)
            diff = "".join(
                difflib.unified_diff(
                    after[k - 1].splitlines(keepends=True),
                    restored.splitlines(keepends=True),
                    f"after {names[k - 1]}",
                    f"after {names[k]} and its rollback",
                    n=2,
                )
            )
            assert not diff, f"{names[k]}.rollback.sql does not restore the schema:\n{diff[:3000]}"


def test_upgrade_to_0012_starts_each_line_at_its_first_waiter(empty_dsn: str) -> None:
    """Queues that existed before 0012 get admitted_seq just below their first waiter.

    One queue has an active execution, a cancelled waiter (seq 2) and two
    waiting behind it (3, 4); another has nobody waiting. Admission after
    the upgrade still starts the first waiter.
    """
    _migrate_through(empty_dsn, "0011_index_plans")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.set_policy('up.a', 1, 100)")
        ids = [r[0] for r in conn.execute("SELECT id FROM fifoq.enqueue_many('up.a', '{1,2,3,4}')")]
        conn.execute("SELECT fifoq.cancel(%s)", (ids[1],))
        conn.execute("SELECT count(*) FROM fifoq.enqueue_many('up.idle', '{1,2}')")
        conn.execute(
            "SELECT fifoq.complete(id, NULL, NULL) FROM fifoq.execution_details"
            " WHERE action = 'up.idle'"
        )
    fifoq.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        bounds = dict(conn.execute("SELECT action, admitted_seq FROM fifoq.queues").fetchall())
        assert bounds == {"up.a": 2, "up.idle": 2}
        conn.execute("SELECT fifoq.complete(%s, NULL, NULL)", (ids[0],))
        active = conn.execute(
            "SELECT seq FROM fifoq.execution_details WHERE action = 'up.a' AND status = 'active'"
        ).fetchall()
        assert active == [(3,)]
        row = conn.execute("SELECT admitted_seq FROM fifoq.queues WHERE action = 'up.a'").fetchone()
        assert row == (3,)


def test_upgrade_to_0026_sweeps_what_ended_executors_left_long_ago(empty_dsn: str) -> None:
    """An executor that ended over ten minutes before 0026, still owning work, is swept after it.

    Before 0026 the sweep looked only at the last ten minutes, so its slot
    stayed taken for good; 0026 marks such executors when it is applied.
    """
    _migrate_through(empty_dsn, "0025_policy_admission_skips_held_queues")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.set_policy('up.left', 1)")
        executor = conn.execute("SELECT fifoq.register_executor('old', 'h', 1, 60)").fetchone()
        assert executor is not None
        row = conn.execute(
            "SELECT id FROM fifoq.enqueue('up.left', NULL, NULL, %s)", executor
        ).fetchone()
        assert row is not None
        # What a held queue left behind an hour ago (the sweep's window long past).
        conn.execute(
            "UPDATE fifoq.executors SET ended_at = now() - interval '1 hour' WHERE id = %s",
            executor,
        )
        conn.execute("SELECT fifoq.maintain()")
        status = "SELECT status::text FROM fifoq.executions WHERE id = %s"
        assert conn.execute(status, row).fetchone() == ("active",)
    fifoq.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.maintain()")
        assert conn.execute(status, row).fetchone() == ("abandoned",)
        marked = conn.execute("SELECT count(*) FROM fifoq.executors WHERE leftovers").fetchone()
        assert marked == (0,)


def test_queues_named_before_0013_still_drain_after_the_upgrade(empty_dsn: str) -> None:
    """Names accepted before 0013 and refused since do not jam their queues or maintain().

    At 0012 a group with U+00A0 (from a payload value, say) and an action
    with U+200B were accepted. After the upgrade their executions complete,
    cancel and time out, the next waiter is admitted, and one maintain()
    pass still serves every queue; new executions cannot join those names,
    and a new row with such a name is refused whoever inserts it.
    """
    _migrate_through(empty_dsn, "0012_line_start")
    group, action = "host\u00a0one", "zw\u200b.a"
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.set_policy('*', 1, 100, 0.2)")

        def enqueue(action: str, group: str | None = None) -> int:
            row = conn.execute("SELECT id FROM fifoq.enqueue(%s, NULL, %s)", (action, group))
            return int(row.fetchone()[0])  # type: ignore[index]

        first, second, third = (enqueue("up.old", group) for _ in range(3))
        oddly_named = enqueue(action)
        busy, waiting = enqueue("up.plain"), enqueue("up.plain")
    fifoq.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:

        def status(execution_id: int) -> str:
            row = conn.execute("SELECT status FROM fifoq.executions WHERE id = %s", (execution_id,))
            return str(row.fetchone()[0])  # type: ignore[index]

        conn.execute("SELECT fifoq.complete(%s, NULL, NULL)", (first,))
        assert status(second) == "active"  # the next in line, admitted by the completion
        assert conn.execute("SELECT fifoq.cancel(%s)", (third,)).fetchone() == (True,)
        conn.execute("SELECT fifoq.cancel(%s)", (oddly_named,))
        conn.execute("SELECT fifoq.complete(%s, 'null', NULL)", (second,))

        def maintained() -> bool:
            # A pass that failed would raise here; once the plain queue's
            # waiter is past its 0.2 s deadline, a pass times it out.
            conn.execute("SELECT fifoq.maintain()")
            return status(waiting) == "timed_out"

        wait_until_sync(maintained, message="the plain queue's waiter timed out by maintain()")
        assert status(busy) == "active"
        counters = conn.execute(
            "SELECT queued_count, active_count FROM fifoq.queues WHERE group_key = %s", (group,)
        ).fetchone()
        assert counters == (0, 0)
        with pytest.raises(psycopg.Error, match="invalid group name"):
            conn.execute("SELECT fifoq.enqueue('up.old', NULL, %s)", (group,))
        with pytest.raises(psycopg.errors.CheckViolation, match="U\\+200B at position 4"):
            conn.execute("INSERT INTO fifoq.queues (action) VALUES (%s)", ("new\u200b.b",))
        with pytest.raises(psycopg.errors.CheckViolation, match="group name"):
            conn.execute(
                "INSERT INTO fifoq.queues (action, group_key) VALUES ('a.b', %s)", (group,)
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="action name"):
            conn.execute(
                "INSERT INTO fifoq.policies (action, max_concurrent, max_queue_length)"
                " VALUES (%s, 1, 1)",
                (action,),
            )


def test_every_table_view_and_function_of_the_schema_has_a_comment(empty_dsn: str) -> None:
    """SPEC §5: `\\d+` in psql explains everything in schema fifoq, yoyo's tables included."""
    fifoq.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        bare = conn.execute(
            """
            SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'fifoq' AND c.relkind IN ('r', 'v', 'm', 'p', 'S')
              AND obj_description(c.oid, 'pg_class') IS NULL
            UNION ALL
            SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'fifoq' AND obj_description(p.oid, 'pg_proc') IS NULL
            ORDER BY 1
            """
        ).fetchall()
    assert not bare, f"objects without COMMENT ON: {[name for (name,) in bare]}"


def test_every_column_of_fifoqs_own_tables_and_views_has_a_comment(empty_dsn: str) -> None:
    """`\\d+ fifoq.queue_stats` and the rest describe every column (yoyo's are its own)."""
    fifoq.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        bare = conn.execute(
            """
            SELECT c.relname || '.' || a.attname
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE n.nspname = 'fifoq' AND c.relkind IN ('r', 'v', 'm', 'p')
              AND position('yoyo' in c.relname) = 0
              AND col_description(c.oid, a.attnum) IS NULL
            ORDER BY 1
            """
        ).fetchall()
    assert not bare, f"columns without COMMENT ON: {[name for (name,) in bare]}"


def test_the_group_columns_comments_say_what_the_default_group_reads(dsn: str) -> None:
    """A comment said NULL where the views show '' (sql/0028): `IS NULL` found nothing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.enqueue('doc.default')")
        conn.execute("SELECT fifoq.refresh_stats()")
        for view in ("execution_details", "queue_stats_live", "queue_stats"):
            row = conn.execute(
                f'SELECT "group" FROM fifoq.{view} WHERE action = %s',  # type: ignore[arg-type]
                ("doc.default",),
            ).fetchone()
            assert row == ("",), view
            comment = conn.execute(
                "SELECT col_description(a.attrelid, a.attnum) FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attname = 'group'",
                (f"fifoq.{view}",),
            ).fetchone()
            assert comment is not None and "'' (empty) for the action's default group" in str(
                comment[0]
            ), f"fifoq.{view}.group: {comment}"


@pytest.mark.parametrize("register", [True, False], ids=["executor", "plain client"])
async def test_the_api_on_an_unmigrated_database_says_to_migrate(
    empty_dsn: str, register: bool
) -> None:
    # A FifoqError that says what to do, not psycopg's InvalidSchemaName.
    with pytest.raises(fifoq.FifoqError, match=r"run `fifoq migrate` or fifoq\.migrate\(\)"):
        async with fifoq.QueueManager.connect(empty_dsn, register_executor=register) as qm:
            await qm.get(1)
