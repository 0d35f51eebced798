"""The server under test (embedded throwaway or given by DSN) and its scratch databases."""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..embedded import EmbeddedPostgres
from ..migrations import migrate

__all__ = ["BenchServer", "redact"]

# Commit timestamps let the latency workloads measure from the instant a
# completion committed (pg_xact_commit_timestamp), not from a client's view.
EMBEDDED_SETTINGS = {"track_commit_timestamp": "on"}


def redact(conninfo: str) -> str:
    """The conninfo with its password replaced by ``***``, safe to print."""
    params = conninfo_to_dict(conninfo)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


class BenchServer:
    """The PostgreSQL server the benchmark measures.

    With a DSN it uses that server; without, it starts an embedded throwaway
    server with durable commits (fsync and synchronous_commit on) and removes
    it on exit. Each workload gets a scratch database cloned from a template
    migrated once, so workloads never see each other's rows; all of them are
    dropped on exit. A given server therefore needs a role with CREATEDB.
    """

    def __init__(self, dsn: str | None, *, settings: dict[str, str] | None = None) -> None:
        self._given = dsn
        self._settings = {**EMBEDDED_SETTINGS, **(settings or {})}
        self._embedded: EmbeddedPostgres | None = None
        self.admin_dsn = ""
        self.location = ""
        self._token = uuid.uuid4().hex[:10]
        self._template = f"fifoq_bench_{self._token}_template"
        self._counter = itertools.count(1)
        self._created: list[str] = []

    def __enter__(self) -> BenchServer:
        if self._given is None:
            self._embedded = EmbeddedPostgres(durable=True, settings=self._settings)
            self._embedded.start()
            self.admin_dsn = self._embedded.dsn
            self.location = self._embedded.description
        else:
            self.admin_dsn = self._given
            self.location = f"given DSN {redact(self._given)}"
        try:
            self._create(self._template, template=None)
            migrate(self._dsn(self._template))
            # No one may connect to a template being cloned.
            self._admin(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(self._template)
                )
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._embedded is None:
                for name in reversed(self._created):
                    with contextlib.suppress(psycopg.Error):
                        self._drop(name)
        finally:
            if self._embedded is not None:
                self._embedded.stop()
                self._embedded = None

    @property
    def server_pid(self) -> int | None:
        """The postmaster's pid when the benchmark started the server (for its CPU time)."""
        if self._embedded is None or self._embedded.directory is None:
            return None
        try:
            text = (self._embedded.directory / "data" / "postmaster.pid").read_text()
            return int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def embedded(self) -> bool:
        """True when the benchmark started its own server."""
        return self._given is None

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh migrated database for one workload run; dropped afterwards."""
        name = f"fifoq_bench_{self._token}_{next(self._counter)}_{label}"[:63]
        self._create(name, template=self._template)
        try:
            yield self._dsn(name)
        finally:
            self._drop(name)

    def _dsn(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(statement)

    def _create(self, name: str, *, template: str | None) -> None:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        try:
            self._admin(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PermissionError(
                f"cannot create the scratch database {name}: the benchmark's role needs "
                f"CREATEDB ({exc.diag.message_primary})"
            ) from None
        self._created.append(name)

    def _drop(self, name: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self._created:
            self._created.remove(name)
