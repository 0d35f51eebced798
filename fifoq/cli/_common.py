"""What every command shares: options, error handling, connecting and printing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import os
import re
import sys
import unicodedata
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, NoReturn, TypeVar

import psycopg
import typer
from rich.console import Console

from ..dsn import DSN_ENV, resolve_dsn, scrub
from ..errors import FifoqError, InvalidInput, InvalidPolicy, error_from_database
from ..manager import QueueManager
from ..models import Execution
from ..validation import DEFAULT_MAX_PAYLOAD_BYTES, to_json

T = TypeVar("T")


def dsn_option(help_text: str) -> Any:
    """The ``--dsn`` option (also read from $FIFOQ_DSN) with a command's own help text."""
    return typer.Option(
        "--dsn",
        envvar=DSN_ENV,
        show_envvar=True,
        metavar="CONNINFO",
        help=help_text,
        show_default=False,
    )


DsnOption = Annotated[
    str | None,
    dsn_option(
        "PostgreSQL URI or key=value conninfo. Default: $FIFOQ_DSN, else the libpq PG* "
        "variables (PGHOST, PGUSER, ...)."
    ),
]
DEBUG_ENV = "FIFOQ_DEBUG"
DebugOption = Annotated[
    bool,
    typer.Option("--debug", envvar=DEBUG_ENV, help="Show the full traceback when something fails."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def pass_on(dsn: str | None, debug: bool) -> None:
    """Hand ``--dsn``/``--debug`` given before a command (``fifoq --dsn URI stats``) on to it.

    For the callbacks of ``fifoq`` and of its command groups: typer parses a
    command's own options after those callbacks have run, and every command
    reads $FIFOQ_DSN and $FIFOQ_DEBUG when it gets no option of its own.
    """
    if dsn is not None:
        os.environ[DSN_ENV] = dsn
    if debug:
        os.environ[DEBUG_ENV] = "1"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``fifoq: error: <message>`` as one line on stderr and exit with ``code``."""
    one_line = re.sub(r"\s+", " ", message).strip()
    sys.stderr.write(f"fifoq: error: {one_line}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def bad_value(option: str, message: str) -> NoReturn:
    """A usage error (exit 2) about one option's value."""
    raise typer.BadParameter(message, param_hint=f"'{option}'")


@contextlib.contextmanager
def errors_handled(debug: bool, dsn: str = "") -> Iterator[None]:
    """Turn fifoq and database errors into one line on stderr and exit 1 (2 for bad input).

    With ``debug`` the exception propagates, so its traceback is shown.
    """
    try:
        yield
    except (InvalidInput, InvalidPolicy) as exc:
        if debug:
            raise
        fail(scrub(str(exc), dsn), code=2)
    except FifoqError as exc:
        if debug:
            raise
        fail(scrub(str(exc), dsn))
    except psycopg.Error as exc:
        if debug:
            raise
        # Also what no fifoq call wrapped (a missing schema, say).
        fail(scrub(str(error_from_database(exc) or _server_message(exc)), dsn))
    except BrokenPipeError:
        # Whoever read the output stopped (`fifoq migrate --sql | head`): not
        # an error to report. Output goes nowhere from here on, so the flush
        # at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as exc:
        if debug:
            raise
        fail(scrub(str(exc) or type(exc).__name__, dsn))


def _server_message(exc: psycopg.Error) -> str:
    # The server's own words and hint, without the CONTEXT lines of the SQL
    # functions it failed in (--debug shows everything). Errors of the
    # client (a connection that failed) have no primary message: all of it.
    primary = exc.diag.message_primary
    if not primary:
        return str(exc) or type(exc).__name__
    hint = exc.diag.message_hint
    return f"{primary} (hint: {hint})" if hint else primary


def run(coro: Coroutine[Any, Any, T], *, debug: bool, dsn: str = "") -> T:
    """Run a coroutine to completion with :func:`errors_handled` around it."""
    with errors_handled(debug, dsn):
        return asyncio.run(coro)
    raise AssertionError("unreachable")  # errors_handled exits or re-raises


def connection_string(cli_value: str | None) -> str:
    """The conninfo a command uses (--dsn, $FIFOQ_DSN, else libpq defaults)."""
    # A CLI should not hang on an unreachable host; a DSN or the environment
    # can still set another connect_timeout.
    os.environ.setdefault("PGCONNECT_TIMEOUT", "10")
    return resolve_dsn(cli_value)


async def check_reachable(dsn: str) -> None:
    """Connect once, so an unreachable server fails at once with libpq's own message.

    (A connection pool would retry silently until its timeout instead.)
    """
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await conn.close()


@contextlib.asynccontextmanager
async def connect(dsn: str, purpose: str, *, executor: bool = False) -> AsyncIterator[QueueManager]:
    """A QueueManager for one command, after a fail-fast connection check.

    A plain client unless ``executor``: a one-shot command leaves no row in
    fifoq.executors. One that waits (``enqueue --wait``) registers, so that
    while it waits the database's deadlines are enforced even with no
    worker connected (every executor offers to run fifoq.maintain).
    """
    await check_reachable(dsn)
    async with QueueManager.connect(
        dsn,
        name=f"fifoq-cli {purpose} pid {os.getpid()}",
        min_size=1,
        max_size=2,
        register_executor=executor,
    ) as qm:
        yield qm


def parse_json_option(option: str, text: str | None) -> Any:
    """Parse a JSON option value; a usage error (exit 2) naming the option if it is not JSON."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        bad_value(option, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    except RecursionError:
        bad_value(option, "JSON nested too deeply to read")
    # What the API would refuse (NaN, NUL, lone surrogates, over the size
    # limit), refused here as a usage error before anything connects.
    try:
        to_json(value, what=option, limit=DEFAULT_MAX_PAYLOAD_BYTES)
    except InvalidInput as exc:
        bad_value(option, str(exc))
    return value


def parse_seconds(option: str, text: str | None, *, allow_none: bool = False) -> float | None:
    """Parse a number of seconds (``none``/``off`` for no limit where allowed)."""
    if text is None:
        return None
    if allow_none and text.strip().lower() in ("none", "off", "never"):
        return None
    try:
        value = float(text)
    except ValueError:
        extra = " or 'none'" if allow_none else ""
        bad_value(option, f"expected a number of seconds{extra}, got {text!r}")
    if not (value > 0 and value != float("inf")):
        bad_value(option, f"expected a positive number of seconds, got {text!r}")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(option: str, text: str) -> timedelta:
    """Parse ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w`` (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        bad_value(option, f"expected a duration such as 90s, 15m, 12h, 7d or 2w, got {text!r}")
    number, unit = match.groups()
    seconds = float(number) * _UNIT_SECONDS[(unit or "s").lower()]
    if seconds > 1e11:  # about 3,000 years: beyond timedelta and any history
        bad_value(option, f"duration too long: {text!r}")
    return timedelta(seconds=seconds)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and datetimes as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any, *, compact: bool = False) -> None:
    """Write a value as JSON to stdout (one line when ``compact``)."""
    indent = None if compact else 2
    sys.stdout.write(json.dumps(to_jsonable(value), indent=indent, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def console() -> Console:
    """A rich console for stdout; wide when not a terminal, so tables are not squeezed."""
    probe = Console()
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(width=160)


def format_age(since: datetime | None, now: datetime) -> str:
    """How long ago ``since`` was, for people: "4.2 s", "3.0 min", "1.5 h"; "-" for None."""
    if since is None:
        return "-"
    seconds = max((now - since).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# Characters a terminal acts on instead of showing: C0/C1 controls (ANSI
# escapes start with one), format characters (bidi overrides, zero-width),
# line and paragraph separators.
_UNSHOWN = frozenset(("Cc", "Cf", "Zl", "Zp"))


def terminal_safe(text: str) -> str:
    """``text`` with every control, format or separator character shown as an escape.

    Payloads, results and errors come from users and their programs: printed
    raw, an ANSI sequence or a bidi override would change what the terminal
    shows. Escaped they stay visible, on one line.
    """
    if text.isprintable():
        return text
    return "".join(
        char if unicodedata.category(char) not in _UNSHOWN else _escape(char) for char in text
    )


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def format_execution(execution: Execution) -> str:
    """An execution as aligned ``field  value`` lines for people."""

    def show(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.isoformat(sep=" ", timespec="milliseconds")
        if isinstance(value, dict | list | bool | int | float) and not isinstance(value, enum.Enum):
            return terminal_safe(json.dumps(value, ensure_ascii=False))
        return terminal_safe(str(value))

    fields = [
        ("id", execution.id),
        ("action", execution.action),
        ("group", execution.group),
        ("seq", execution.seq),
        ("status", execution.status),
        ("payload", execution.payload),
        ("result", execution.result),
        ("error", execution.error),
        ("enqueued_at", execution.enqueued_at),
        ("started_at", execution.started_at),
        ("finished_at", execution.finished_at),
        ("owner", execution.owner),
    ]
    return "\n".join(f"{name:<12} {show(value)}" for name, value in fields)
