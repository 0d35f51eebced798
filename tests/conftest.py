"""Database fixtures for every test level: one server per session, one fresh database per test.

The server is, in order: the one at ``FIFOQ_TEST_DSN``; else a testcontainers
PostgreSQL when a Docker engine answers; else an embedded throwaway server
started from the PostgreSQL binaries on this machine (`fifoq.embedded`).

The schema is migrated once per session into a template database; each test
gets ``CREATE DATABASE test_<uuid> TEMPLATE <template>`` and it is dropped
afterwards. Under pytest-xdist every worker starts its own server (embedded or
container); with ``FIFOQ_TEST_DSN`` the workers share that server, and so may
whole pytest sessions run side by side: each session (and xdist worker)
builds its own template, named after its host and process
(``fifoq_template_<host>_<pid>_<worker>``), so no two processes ever create,
migrate or clone the same template.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import os
import socket
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

CONTAINER_IMAGE = os.environ.get("FIFOQ_TEST_IMAGE", "postgres:17-alpine")


@dataclass(frozen=True)
class PgServer:
    """The PostgreSQL server of this test session."""

    admin_dsn: str  # maintenance database, superuser
    bindir: Path | None  # server binaries (matching pg_dump), when we started it locally
    description: str  # printable, without password


def redact(conninfo: str) -> str:
    """The conninfo with any password removed, safe to print."""
    params = conninfo_to_dict(conninfo)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def dsn_for(conninfo: str, dbname: str) -> str:
    """The same server connection, to another database."""
    return make_conninfo(conninfo, dbname=dbname)


@functools.cache
def server_source() -> str:
    """Which server this session uses: 'env', 'docker' or 'embedded' (decided once)."""
    if os.environ.get("FIFOQ_TEST_DSN"):
        return "env"
    return "docker" if _docker_answers() else "embedded"


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    # A failed ping leaves docker-py's socket to the garbage collector; collect
    # it here so its ResourceWarning does not surface in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped]  # comes with testcontainers

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def pytest_report_header(config: pytest.Config) -> str:
    source = server_source()
    if source == "env":
        return f"fifoq test database: FIFOQ_TEST_DSN ({redact(os.environ['FIFOQ_TEST_DSN'])})"
    if source == "docker":
        return f"fifoq test database: testcontainers {CONTAINER_IMAGE}, one per xdist worker"
    return "fifoq test database: embedded PostgreSQL (fifoq.embedded), one per xdist worker"


@contextlib.contextmanager
def _start_server() -> Iterator[PgServer]:
    source = server_source()
    if source == "env":
        dsn = os.environ["FIFOQ_TEST_DSN"]
        yield PgServer(dsn, None, f"FIFOQ_TEST_DSN ({redact(dsn)})")
    elif source == "docker":
        # testcontainers and docker warn about their own deprecations; those
        # are not ours to fail on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                from testcontainers.community.postgres import PostgresContainer
            except ImportError:  # testcontainers < 4.14
                from testcontainers.postgres import PostgresContainer
            container = PostgresContainer(CONTAINER_IMAGE, driver=None).with_command(
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            container.start()
        try:
            yield PgServer(container.get_connection_url(), None, f"container {CONTAINER_IMAGE}")
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                container.stop()
    else:
        from fifoq.embedded import EmbeddedPostgres

        with EmbeddedPostgres(durable=False) as pg:
            yield PgServer(pg.dsn, pg.bindir, pg.description)


def _admin_execute(admin_dsn: str, query: sql.Composed) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(query)


def _drop_database(admin_dsn: str, name: str) -> None:
    _admin_execute(
        admin_dsn,
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
    )


def _migrate(dsn: str) -> None:
    from fifoq.migrations import migrate

    migrate(dsn)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (see the module docstring for which one)."""
    with _start_server() as server:
        yield server


@pytest.fixture(scope="session")
def admin_dsn(pg_server: PgServer) -> str:
    """Conninfo of the server's maintenance database, as superuser."""
    return pg_server.admin_dsn


@pytest.fixture(scope="session")
def pg_bindir(pg_server: PgServer) -> Path | None:
    """The server's binary directory (for a matching pg_dump), or None for external servers."""
    return pg_server.bindir


# This host's part of template names: a short hash, as hostnames can be long.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _drop_orphan_templates(admin_dsn: str) -> None:
    """Drop templates this host's sessions left behind when they were killed.

    Only this host's (the pid in the name means nothing elsewhere), and only
    those whose process is gone: a live one belongs to a session running now.
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (f"fifoq_template_{_HOST}_%",),
            )
        ]
    for name in names:
        pid = name.split("_")[3]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _drop_database(admin_dsn, name)
        except PermissionError:
            pass  # alive, another user's


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """Name of a database migrated once per session (per xdist worker), to clone per test."""
    worker = os.environ.get("PYTEST_XDIST_WORKER") or "main"
    name = f"fifoq_template_{_HOST}_{os.getpid()}_{worker}"
    admin = pg_server.admin_dsn
    _drop_orphan_templates(admin)
    _admin_execute(admin, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    _migrate(dsn_for(admin, name))
    # From here on nothing may connect to it, so cloning can never find it busy.
    _admin_execute(
        admin,
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)),
    )
    yield name
    _drop_database(admin, name)


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """Conninfo of a fresh, migrated database of this test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    admin = pg_server.admin_dsn
    _admin_execute(
        admin,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_db)
        ),
    )
    try:
        yield dsn_for(admin, name)
    finally:
        _drop_database(admin, name)
