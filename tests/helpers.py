"""Shared test helpers: waiting on conditions and checking FIFO and limits from the database."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, TypeVar, overload

import psycopg
import pytest
from psycopg.rows import dict_row

T = TypeVar("T")

# Every status change is a new clock_timestamp(), so comparisons of
# timestamps taken inside one server are exact; no tolerance is needed.


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    *,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    timeout: float = ...,
    *,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    *,
    interval: float = 0.01,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Raises AssertionError naming ``message`` if ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not reached within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    *,
    interval: float = 0.01,
    message: str = "condition",
) -> T:
    """Blocking twin of :func:`wait_until` for synchronous code."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


@dataclass(frozen=True)
class Row:
    """One execution as stored, with the timestamps the checks need."""

    id: int
    action: str
    group: str
    seq: int
    status: str
    owner: int | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_ROWS_SQL = """
SELECT id, action, "group", seq, status::text AS status, owner,
       enqueued_at, started_at, finished_at
FROM fifoq.execution_details
WHERE (%(action)s::text IS NULL OR action = %(action)s)
ORDER BY action, "group", seq
"""


async def fetch_rows(dsn: str, action: str | None = None) -> list[Row]:
    """Every execution (of one action, or all), ordered by action, group and seq."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_ROWS_SQL, {"action": action})
        return [Row(**r) for r in await cur.fetchall()]


def fetch_rows_sync(dsn: str, action: str | None = None) -> list[Row]:
    """Blocking twin of :func:`fetch_rows`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(_ROWS_SQL, {"action": action})
        return [Row(**r) for r in cur.fetchall()]


def max_overlap(rows: Iterable[Row], now: datetime | None = None) -> int:
    """Highest number of executions that held a slot at one instant.

    A slot is held from ``started_at`` to ``finished_at`` (or ``now`` while
    still active). At equal timestamps a release counts before an acquisition:
    a completion hands its slot on in the same transaction, later in time.
    """
    events: list[tuple[datetime, int]] = []
    for r in rows:
        if r.started_at is None:
            continue
        end = r.finished_at
        if end is None:
            if r.status != "active":
                raise AssertionError(f"execution {r.id} is {r.status} but has no finished_at")
            end = now or datetime.max.replace(tzinfo=r.started_at.tzinfo)
        if end < r.started_at:
            raise AssertionError(f"execution {r.id} finished before it started")
        events.append((r.started_at, +1))
        events.append((end, -1))
    events.sort()  # (t, -1) sorts before (t, +1)
    current = highest = 0
    for _, delta in events:
        current += delta
        highest = max(highest, current)
    return highest


def queue_violations(rows: Sequence[Row], limit: int | None) -> list[str]:
    """What breaks the limit or strict FIFO in the rows of one queue (empty if nothing).

    Checks: seq unique; ``enqueued_at`` and ``started_at`` never decrease as
    seq grows; no execution started while one with a lower seq was still
    waiting (queued, not yet started, cancelled or timed out); and no instant
    with more than ``limit`` executions holding a slot.
    """
    problems: list[str] = []
    ordered = sorted(rows, key=lambda r: r.seq)
    seqs = [r.seq for r in ordered]
    if len(set(seqs)) != len(seqs):
        problems.append("duplicate seq numbers")
    for a, b in itertools.pairwise(ordered):
        if b.enqueued_at < a.enqueued_at:
            problems.append(f"seq {b.seq} was enqueued before seq {a.seq}")
    started = [r for r in ordered if r.started_at is not None]
    for a, b in itertools.pairwise(started):
        assert a.started_at is not None and b.started_at is not None
        if b.started_at < a.started_at:
            problems.append(f"seq {b.seq} started before seq {a.seq}")
    # A lower seq still waiting when a higher seq started is a FIFO violation.
    # Walk in seq order keeping the latest instant any earlier row was waiting.
    waiting_until: datetime | None = None
    waiting_seq = 0
    for r in ordered:
        if r.started_at is not None and waiting_until is not None and r.started_at < waiting_until:
            problems.append(f"seq {r.seq} started while seq {waiting_seq} was still waiting")
        left_queue = r.started_at or r.finished_at
        end = left_queue or datetime.max.replace(tzinfo=r.enqueued_at.tzinfo)
        if waiting_until is None or end > waiting_until:
            waiting_until, waiting_seq = end, r.seq
    if limit is not None:
        highest = max_overlap(ordered)
        if highest > limit:
            problems.append(f"{highest} executions active at once, limit {limit}")
    return problems


def assert_fifo_and_limit(rows: Sequence[Row], limit: int | None) -> None:
    """Assert strict FIFO and the limit for every queue among ``rows``."""
    queues: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        queues.setdefault((r.action, r.group), []).append(r)
    problems = [
        f"{action}/{group or '-'}: {p}"
        for (action, group), queue_rows in sorted(queues.items())
        for p in queue_violations(queue_rows, limit)
    ]
    assert not problems, "; ".join(problems[:20])


async def counts(dsn: str) -> dict[str, Any]:
    """Row counts and counter sums of every fifoq table: equal before and after a no-op."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            """
            SELECT (SELECT count(*) FROM fifoq.executions),
                   (SELECT count(*) FROM fifoq.queues),
                   (SELECT count(*) FROM fifoq.policies),
                   (SELECT coalesce(json_agg(q ORDER BY q.id), '[]')
                      FROM (SELECT id, action, group_key, last_seq, queued_count,
                                   active_count, total_enqueued, total_succeeded,
                                   total_failed, total_cancelled, total_timed_out,
                                   total_abandoned FROM fifoq.queues) q),
                   (SELECT coalesce(json_agg(e ORDER BY e.id), '[]')
                      FROM (SELECT id, status, result, error, owner
                              FROM fifoq.executions) e),
                   (SELECT coalesce(json_agg(p ORDER BY p.action), '[]')
                      FROM (SELECT action, max_concurrent, max_queue_length,
                                   queue_timeout, on_limit, group_by
                              FROM fifoq.policies) p)
            """
        )
        row = await cur.fetchone()
    assert row is not None
    keys = ("executions", "queues", "policies", "queue_rows", "execution_rows", "policy_rows")
    return dict(zip(keys, row, strict=True))


def dump_tasks(reason: str) -> str:
    """The stacks of every asyncio task of the running loop, to see what a hung test waits on."""
    lines = [f"--- asyncio tasks ({reason}) ---"]
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}: {task.get_coro()!r}")
        for frame in task.get_stack(limit=40):
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
    return "\n".join(lines)


async def count_of(dsn: str, statement: LiteralString) -> int:
    """The count a fixed ``SELECT count(*) ...`` returns, on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(statement)
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def executor_row(dsn: str, executor_id: int) -> tuple[object, object]:
    """(ended_at, end_reason) of an executor: (None, None) while it is alive."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT ended_at, end_reason FROM fifoq.executors WHERE id = %s", (executor_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


async def watchdog(after: float) -> None:
    """Print :func:`dump_tasks` to stderr if still running ``after`` seconds from now."""
    await asyncio.sleep(after)
    print(dump_tasks(f"test still running after {after} s"), file=sys.stderr, flush=True)


# A test that runs this long is stuck: print what every task waits on
# (pytest-timeout, which fires later, shows threads only).
WATCHDOG_SECONDS = 120.0


@pytest.fixture(autouse=True)
async def stuck_test_watchdog() -> AsyncIterator[None]:
    """Autouse where imported (a conftest): dumps the asyncio tasks of a stuck test."""
    task = asyncio.create_task(watchdog(WATCHDOG_SECONDS))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
