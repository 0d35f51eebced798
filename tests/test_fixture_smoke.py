"""Smoke tests of the database fixtures: each test gets a database of its own."""

from __future__ import annotations

import psycopg
import pytest


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_its_own_database(dsn: str, run: int) -> None:
    # Both runs create the same table; the second would fail if they shared a database.
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE smoke (run int NOT NULL)")
        conn.execute("INSERT INTO smoke VALUES (%s)", (run,))
        assert conn.execute("SELECT array_agg(run) FROM smoke").fetchone() == ([run],)
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        assert name[0].startswith("test_")


async def test_server_version_is_readable(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SHOW server_version_num")
        row = await cur.fetchone()
    assert row is not None
    assert int(row[0]) >= 130000  # DROP DATABASE ... WITH (FORCE) needs 13+


def test_admin_dsn_is_a_superuser_on_another_database(admin_dsn: str, dsn: str) -> None:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute(
            "SELECT current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row is not None
    admin_db, superuser = row
    assert superuser
    assert not admin_db.startswith("test_")
