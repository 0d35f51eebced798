"""The machine and server settings a benchmark result depends on."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import psycopg

from .queries import query

__all__ = ["Machine", "describe_machine", "load_average", "process_tree_cpu"]


@dataclass(frozen=True)
class Machine:
    """Where the figures were measured."""

    cores: int
    cpu: str
    platform: str
    python: str
    fifoq: str
    psycopg: str
    server_version: str
    fsync: str
    synchronous_commit: str
    wal_sync_method: str
    full_page_writes: str
    shared_buffers: str
    max_connections: str
    track_commit_timestamp: str
    location: str
    load_average: str  # at the start; other work on the machine skews every figure

    def rows(self) -> list[tuple[str, str]]:
        """Label and value pairs for printing."""
        return [
            ("cores", f"{self.cores} ({self.cpu})"),
            ("platform", f"{self.platform}, Python {self.python}"),
            ("fifoq / psycopg", f"{self.fifoq} / {self.psycopg}"),
            ("PostgreSQL", self.server_version),
            ("fsync", f"{self.fsync} ({self.wal_sync_method})"),
            ("synchronous_commit", self.synchronous_commit),
            ("full_page_writes", self.full_page_writes),
            ("shared_buffers", self.shared_buffers),
            ("max_connections", self.max_connections),
            ("track_commit_timestamp", self.track_commit_timestamp),
            ("server", self.location),
            ("load average at start", self.load_average),
        ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def describe_machine(dsn: str, location: str) -> Machine:
    """Cores, versions and the server's durability settings (read from the server)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query("server_settings"), {}).fetchone()
    assert row is not None
    (
        server_version,
        full_version,
        fsync,
        sync_commit,
        sync_method,
        fpw,
        buffers,
        max_conn,
        commit_ts,
    ) = (str(v) if v is not None else "unknown" for v in row)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(
        cores=cores or 0,
        cpu=_cpu_model(),
        platform=platform.platform(),
        python=platform.python_version(),
        fifoq=_version("fifoq"),
        psycopg=_version("psycopg"),
        server_version=full_version.split(" on ")[0] if full_version else server_version,
        fsync=fsync,
        synchronous_commit=sync_commit,
        wal_sync_method=sync_method,
        full_page_writes=fpw,
        shared_buffers=buffers,
        max_connections=max_conn,
        track_commit_timestamp=commit_ts,
        location=location,
        load_average=load_average(),
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or "unknown"."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)"


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name (field 2) may hold spaces; it ends at the last ')'.
        return f.read().rsplit(")", 1)[1].split()


def process_tree_cpu(pid: int) -> float | None:
    """CPU seconds used so far by a server process and all its children, ended ones included.

    Reads /proc (Linux): the process's own time, the time of the children it
    has reaped (cutime, cstime), and the time of its live children. The
    difference of two readings is the server's CPU over that span. None where
    /proc cannot be read.
    """
    tick = os.sysconf("SC_CLK_TCK")
    try:
        # After ")": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based.
        own = _stat_fields(pid)
        total = sum(int(own[i]) for i in (11, 12, 13, 14))
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = _stat_fields(int(entry))
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return total / tick
