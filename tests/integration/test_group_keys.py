"""Group names from group_by: each value escaped, so different values never share a group."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from fifoq import QueueManager, Status

# group_by keys, payload, the group fifoq.group_key gives.
CASES: list[tuple[list[str], Any, str]] = [
    (["host"], {"host": "web-1"}, "web-1"),  # ordinary values are unchanged
    (["region", "host"], {"region": "eu", "host": "h1"}, "eu,h1"),
    (["region", "host"], {"region": "eu,west", "host": "h1"}, "eu\\,west,h1"),
    (["region", "host"], {"region": "eu", "host": "west,h1"}, "eu,west\\,h1"),
    # Escaping commas alone would make both of these 'a\,b\,c'.
    (["x", "y"], {"x": "a\\", "y": "b,c"}, "a\\\\,b\\,c"),
    (["x", "y"], {"x": "a,b\\", "y": "c"}, "a\\,b\\\\,c"),
    (["host"], {"host": "a,b"}, "a\\,b"),
    (["x", "y"], {"y": 1}, ",1"),  # a missing key gives an empty value
    (["x", "y"], [1, 2], ","),  # so does a payload that is not an object
]


async def test_group_key_escapes_backslashes_and_commas(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for keys, payload, expected in CASES:
            cur = await conn.execute(
                "SELECT fifoq.group_key(%s, %s::jsonb)", (keys, json.dumps(payload))
            )
            assert await cur.fetchone() == (expected,), (keys, payload)


@pytest.mark.parametrize("batch", [False, True], ids=["enqueue", "enqueue_many"])
async def test_values_that_joined_alike_are_different_groups_with_a_limit_each(
    qm: QueueManager, batch: bool
) -> None:
    """Before 0014 both payloads were group 'eu,west,h1': one limit, the second waited."""
    await qm.set_policy("g.escaped", max_concurrent=1, group_by=("region", "host"))
    payloads = [{"region": "eu,west", "host": "h1"}, {"region": "eu", "host": "west,h1"}]
    if batch:
        executions = await qm.enqueue_many("g.escaped", payloads)
    else:
        executions = [await qm.enqueue("g.escaped", p) for p in payloads]
    assert [(e.group, e.status) for e in executions] == [
        ("eu\\,west,h1", Status.ACTIVE),
        ("eu,west\\,h1", Status.ACTIVE),
    ]
    for execution in executions:
        stats = await qm.stats("g.escaped", group=execution.group)
        assert (stats.active_count, stats.queue_length) == (1, 0)
    # Each group still holds to its own limit.
    again = await qm.enqueue("g.escaped", payloads[0])
    assert (again.group, again.status) == ("eu\\,west,h1", Status.QUEUED)
