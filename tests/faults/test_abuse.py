"""Abuse: huge and deep payloads, hostile names, overflowing limits, thousands of queues, crowds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from helpers import assert_fifo_and_limit, counts, fetch_rows

from fifoq import InvalidInput, InvalidPolicy, QueueManager, Status
from fifoq.errors import wrap_database_errors


async def test_payloads_over_the_configured_limit_are_refused_before_the_database(
    dsn: str,
) -> None:
    async with QueueManager.connect(dsn, max_payload_bytes=1000) as qm:
        before = await counts(dsn)
        for payload in ({"x": "a" * 2000}, ["é" * 600], "z" * (64 * 1024 * 1024)):
            with pytest.raises(
                InvalidInput,
                match=r"payload for action 'abuse.big' is \d+ bytes of JSON, over the limit "
                r"of 1000 bytes",
            ):
                await qm.enqueue("abuse.big", payload)
        assert await counts(dsn) == before
        fits = await qm.enqueue_and_wait("abuse.big", {"x": "a" * 900})
        with pytest.raises(InvalidInput, match="result is"):
            await qm.complete(fits.id, result={"r": "b" * 5000})
        assert (await qm.get(fits.id)).status is Status.ACTIVE  # refused result, still running
        await qm.complete(fits.id, result={"r": "small"})
    async with QueueManager.connect(dsn) as qm:  # the default limit is 1 MiB
        with pytest.raises(InvalidInput, match="over the limit of 1048576 bytes"):
            await qm.enqueue("abuse.big", {"x": "a" * (1024 * 1024)})


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_deeply_nested_payloads_get_a_clear_error_and_nothing_crashes(dsn: str) -> None:
    async with QueueManager.connect(dsn) as qm:
        before = await counts(dsn)
        with pytest.raises(InvalidInput) as refused:
            await qm.enqueue("abuse.deep", nested(100_000))
        message = str(refused.value)
        assert (
            "payload for action 'abuse.deep' is not JSON-serialisable" in message
            and "\n" not in message
        )
        execution = await qm.enqueue_and_wait("abuse.deep", nested(100))  # deep, but fine
        with pytest.raises(InvalidInput, match="result is not JSON-serialisable"):
            await qm.complete(execution.id, result={"deep": nested(100_000)})
        await qm.complete(execution.id, result=nested(100))
        assert (await qm.get(execution.id)).result == nested(100)
        # SQL callers sending JSON text too deep for the server get an error too
        # and the server lives on.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            text = "[" * 100_000 + "]" * 100_000
            with pytest.raises(InvalidInput), wrap_database_errors():
                await conn.execute("SELECT fifoq.enqueue('abuse.deep', %s::jsonb)", (text,))
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        after = await counts(dsn)
        assert after["executions"] == before["executions"] + 1


HOSTILE_NAMES = [
    "x'); DROP TABLE fifoq.executions; --",
    'double"quote',
    "back\\slash",
    "$$dollar$$ $tag$",
    "%s %(name)s {0} {}",
    "fifoq_executor_1",
    "名前.デプロイ",
    "emoji.🚀🔥",
    "arabic.نشر",
    " leading and trailing ",
    "a" * 255,
    "🚀" * 255,  # 255 characters, 1020 bytes
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
async def test_hostile_but_valid_names_are_stored_exactly(dsn: str, name: str) -> None:
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy(name, max_concurrent=1)
        first = await qm.enqueue_and_wait(name, {"n": name}, group=name)
        second = await qm.enqueue(name, group=name)
        assert (first.action, first.group, second.status) == (name, name, Status.QUEUED)
        await qm.complete(first.id)
        assert (await qm.wait_started(second.id, timeout=5)).status is Status.ACTIVE
        await qm.complete(second.id)
        got = await qm.get(first.id)
        assert (got.action, got.group, got.payload) == (name, name, {"n": name})
        stats = await qm.stats(name, group=name)
        assert (stats.total_completed, stats.max_concurrent) == (2, 1)
        assert [p.action for p in await qm.list_policies()] == [name]
        await qm.refresh_stats()
        assert [(s.action, s.group) for s in await qm.snapshot_stats()] == [(name, name)]
    # The schema is intact.
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM fifoq.executions")
        assert await cur.fetchone() == (2,)


BAD_NAMES = [
    "",
    "a" * 256,
    "🚀" * 256,
    "nul\x00byte",
    "tab\there",
    "new\nline",
    "escape\x1b[31m",
    "del\x7f",
    "c1\x85control",
    "rtl\u202eoverride",
    "rlm\u200fmark",
    "zero\u200bwidth",
    123,
    None,
    b"bytes",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
async def test_bad_names_are_refused_in_one_line_and_change_nothing(dsn: str, name: Any) -> None:
    async with QueueManager.connect(dsn) as qm:
        before = await counts(dsn)
        with pytest.raises(InvalidInput) as refused:
            await qm.enqueue(name)
        assert "invalid action name" in str(refused.value) and "\n" not in str(refused.value)
        if name not in (None, ""):  # both mean the default group
            with pytest.raises(InvalidInput) as refused:
                await qm.enqueue("abuse.ok", group=name)
            assert "invalid group name" in str(refused.value)
        with pytest.raises(InvalidPolicy):
            await qm.set_policy(name, max_concurrent=1)
        assert await counts(dsn) == before


OVERFLOWS: list[dict[str, Any]] = [
    {"max_concurrent": 2**31},
    {"max_concurrent": 2**63},
    {"max_concurrent": 2**64 + 1},
    {"max_concurrent": -(2**63)},
    {"max_concurrent": 1, "max_queue_length": 2**31},
    {"max_concurrent": 1, "max_queue_length": 2**63},
    {"max_concurrent": 1, "max_queue_length": -(2**31) - 1},
    {"max_concurrent": 1, "queue_timeout": 1e308},
    {"max_concurrent": 1, "queue_timeout": 1e13},
    {"max_concurrent": 1, "queue_timeout": 2**63},
    {"max_concurrent": 1.5},
    {"max_concurrent": True},
]


@pytest.mark.parametrize("values", OVERFLOWS, ids=range(len(OVERFLOWS)))
async def test_overflowing_limits_are_invalid_policies(dsn: str, values: dict[str, Any]) -> None:
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("abuse.limit", max_concurrent=3)
        with pytest.raises(InvalidPolicy) as refused:
            await qm.set_policy("abuse.limit", **values)
        assert "\n" not in str(refused.value)
        policy = await qm.get_policy("abuse.limit")
        assert (policy.max_concurrent, policy.max_queue_length) == (3, 10_000)


async def test_the_largest_limits_work(dsn: str) -> None:
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy(
            "abuse.max",
            max_concurrent=2**31 - 1,
            max_queue_length=2**31 - 1,
            queue_timeout=1e9,
        )
        assert (await qm.enqueue("abuse.max")).status is Status.ACTIVE
        await qm.set_policy("abuse.max", max_concurrent=1, queue_timeout=1e9)
        waiting = await qm.enqueue("abuse.max")
        assert waiting.status is Status.QUEUED
        assert await qm.cancel(waiting.id)


async def test_thousands_of_queues_keep_maintenance_and_stats_fast_and_right(dsn: str) -> None:
    actions = 3000
    async with (
        QueueManager.connect(dsn, poll_interval=2.0, lease=10.0) as qm,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
    ):
        await qm.set_policy("many.*", max_concurrent=1)
        # Two executions per action: one active, one waiting in each queue.
        await conn.execute(
            "SELECT fifoq.enqueue('many.' || i, NULL) FROM generate_series(1, %s) i,"
            " generate_series(1, 2) j ORDER BY i, j",
            (actions,),
        )

        async def timed(query: str) -> float:
            start = time.perf_counter()
            await conn.execute(query)
            return time.perf_counter() - start

        # maintain() finds nothing to do, but looks at every queue.
        maintain = min([await timed("SELECT fifoq.maintain()") for _ in range(5)])
        refresh = min([await timed("SELECT fifoq.refresh_stats(true)") for _ in range(5)])
        live = {(s.action, s.group): s for s in await qm.live_stats()}
        snapshot = {(s.action, s.group): s for s in await qm.snapshot_stats()}
        assert len(live) == len(snapshot) == actions
        assert all(
            (s.queue_length, s.active_count, s.max_concurrent) == (1, 1, 1)
            for s in snapshot.values()
        )
        # A raised pack limit admits the waiter of every queue in one call.
        start = time.perf_counter()
        await qm.set_policy("many.*", max_concurrent=2)
        raise_limit = time.perf_counter() - start
        cur = await conn.execute("SELECT count(*) FROM fifoq.executions WHERE status = 'active'")
        assert await cur.fetchone() == (2 * actions,)
    print(
        f"\n{actions} queues: maintain {maintain * 1000:.1f} ms, refresh_stats"
        f" {refresh * 1000:.1f} ms, raising the pack limit {raise_limit * 1000:.0f} ms"
    )
    # Generous bounds for a loaded 2-core CI machine; typical figures are far lower.
    assert maintain < 1.0 and refresh < 2.0, (maintain, refresh)


async def test_a_thousand_concurrent_waiters_in_one_process(dsn: str) -> None:
    waiters = 1000
    limit = 5
    async with QueueManager.connect(dsn, name="crowd", poll_interval=0.2) as qm:
        await qm.set_policy("abuse.crowd", max_concurrent=limit)
        active = 0
        highest = 0

        async def one(i: int) -> int:
            nonlocal active, highest
            execution = await qm.enqueue_and_wait("abuse.crowd", {"i": i})
            active += 1
            highest = max(highest, active)
            await asyncio.sleep(0)  # let others run while the slot is held
            active -= 1
            await qm.complete(execution.id)
            return execution.seq

        async with asyncio.timeout(120):
            seqs = await asyncio.gather(*(one(i) for i in range(waiters)))
    assert sorted(seqs) == list(range(1, waiters + 1))
    assert highest <= limit
    rows = await fetch_rows(dsn, "abuse.crowd")
    assert [r.status for r in rows] == ["succeeded"] * waiters
    assert_fifo_and_limit(rows, limit)
