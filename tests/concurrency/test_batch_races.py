"""OS processes racing enqueue_many, single enqueues and complete_many on one action.

Two producers enqueue batches, a third enqueues one at a time, and two
completers claim what is admitted and finish it with complete_many (batches
that span both queues of the action). An observer samples the queues the
whole time. The limit must hold at every committed instant, executions must
start in seq order, seq numbers must have no holes and every batch must sit
in a contiguous run of its queue, in input order.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from typing import Any

import psycopg
from helpers import Row, assert_fifo_and_limit, fetch_rows, max_overlap
from racers import (
    SPAWN,
    claim_and_complete_many,
    enqueue_batches,
    enqueue_singly,
    join_all,
    start,
)

from fifoq import QueueManager

ACTION = "brace.mix"
GROUPS = "ab"
LIMIT = 3
BATCHERS = (1, 2)
SINGLE = 3
COMPLETERS = (4, 5)
BATCHES_EACH, SINGLES = 30, 90

_SAMPLE = """
SELECT q.group_key, q.active_count, q.queued_count,
       (SELECT count(*) FROM fifoq.executions e WHERE e.queue_id = q.id AND e.status = 'active'),
       (SELECT count(*) FROM fifoq.executions e WHERE e.queue_id = q.id AND e.status = 'queued')
FROM fifoq.queues q
WHERE q.action = %s
"""


async def test_batches_singles_and_complete_many_racing_keep_the_limit_fifo_and_seq(
    dsn: str,
) -> None:
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy(ACTION, max_concurrent=LIMIT, max_queue_length=100_000, group_by=("g",))
    start_line = SPAWN.Barrier(len(BATCHERS) + 1 + len(COMPLETERS))
    producers_done = SPAWN.Event()
    producers = [
        start(enqueue_batches, dsn, ACTION, BATCHES_EACH, start_line, seed, GROUPS)
        for seed in BATCHERS
    ]
    producers.append(start(enqueue_singly, dsn, ACTION, SINGLES, start_line, SINGLE, GROUPS))
    completers = [
        start(claim_and_complete_many, dsn, ACTION, producers_done, start_line, seed)
        for seed in COMPLETERS
    ]
    produced = asyncio.create_task(asyncio.to_thread(join_all, producers, 60))

    # Sample every queue while they race: each snapshot is one committed state.
    problems: list[str] = []
    samples = busy_samples = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer:
        while True:
            if produced.done():
                producers_done.set()  # also when one failed: the completers then stop too
            finished = not any(p.is_alive() for p in completers)  # before the read: it is last
            cur = await observer.execute(_SAMPLE, (ACTION,))
            for group, active_count, queued_count, active, queued in await cur.fetchall():
                if active > LIMIT:
                    problems.append(f"group {group}: {active} active, limit {LIMIT}")
                if (active_count, queued_count) != (active, queued):
                    problems.append(
                        f"group {group}: counters {active_count}/{queued_count},"
                        f" rows {active}/{queued}"
                    )
                if queued and active < LIMIT:  # a free slot left beside a waiter
                    problems.append(f"group {group}: {active} active while {queued} wait")
                busy_samples += active == LIMIT and queued > 0
            samples += 1
            if finished:
                break
    await produced
    await asyncio.to_thread(join_all, completers, 60)
    assert not problems, f"{len(problems)} bad samples of {samples}, first: {problems[:5]}"
    assert samples > 50 and busy_samples > 10  # the observer saw the queues contended

    rows = await fetch_rows(dsn, ACTION)
    payloads = await _payloads(dsn)
    assert {r.status for r in rows} == {"succeeded"}
    assert {r.owner for r in rows} == set(await _executor_ids(dsn, COMPLETERS))
    assert_fifo_and_limit(rows, LIMIT)  # started_at in seq order, no jump, the limit

    by_group: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_group[r.group].append(r)
    assert set(by_group) == set(GROUPS)
    for group, queue in by_group.items():
        assert [r.seq for r in queue] == list(range(1, len(queue) + 1)), f"holes in {group}"
        assert max_overlap(queue) == LIMIT  # contended, not merely respected
        # The producers interleave in the queue: the race was real.
        producers_in_seq_order = [payloads[r.id]["by"] for r in queue]
        switches = sum(a != b for a, b in itertools.pairwise(producers_in_seq_order))
        assert switches > 20, f"group {group}: producers took turns only {switches} times"

    # Every batch is whole, and its share of each queue is one contiguous run
    # of seq numbers in input order.
    batches: dict[tuple[int, int], list[tuple[str, int, dict[str, Any]]]] = defaultdict(list)
    for r in rows:
        p = payloads[r.id]
        assert p["g"] == r.group
        batches[p["by"], p["batch"]].append((r.group, r.seq, p))
    assert {key[0] for key in batches} == {*BATCHERS, SINGLE}
    for (by, batch), members in batches.items():
        assert sorted(p["i"] for _, _, p in members) == list(range(members[0][2]["size"])), (
            f"batch {batch} of producer {by} is not whole"
        )
        for group in GROUPS:
            share = sorted((seq, p["i"]) for g, seq, p in members if g == group)
            if not share:
                continue
            seqs = [seq for seq, _ in share]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (
                f"batch {batch} of producer {by} is split in group {group}: {seqs}"
            )
            assert [i for _, i in share] == sorted(i for _, i in share), (
                f"batch {batch} of producer {by} is out of input order in group {group}"
            )
    assert len([k for k in batches if k[0] in BATCHERS]) == BATCHES_EACH * len(BATCHERS)
    assert len([k for k in batches if k[0] == SINGLE]) == SINGLES

    async with QueueManager.connect(dsn) as qm:
        for group, queue in by_group.items():
            stats = await qm.stats(ACTION, group=group)
            assert (stats.active_count, stats.queue_length) == (0, 0)
            assert stats.total_enqueued == stats.total_completed == len(queue)
            assert stats.total_failed == 0


async def _payloads(dsn: str) -> dict[int, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, payload FROM fifoq.execution_details WHERE action = %s", (ACTION,)
        )
        return {execution_id: payload for execution_id, payload in await cur.fetchall()}


async def _executor_ids(dsn: str, seeds: tuple[int, ...]) -> list[int]:
    """The executor ids the completer processes registered under (completer-<seed>)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id FROM fifoq.executors WHERE name = ANY (%s)",
            ([f"completer-{seed}" for seed in seeds],),
        )
        return [row[0] for row in await cur.fetchall()]


async def test_batches_creating_the_same_new_queues_at_once_do_not_deadlock(dsn: str) -> None:
    """Two executors enqueue batches over overlapping sets of new groups at the same time.

    Each round uses groups nobody used before, so both batches create queues.
    Every batch must go through: no deadlock, no error.
    """
    rng = random.Random(11)
    async with (
        QueueManager.connect(dsn, name="first") as first,
        QueueManager.connect(dsn, name="second") as second,
    ):
        await first.set_policy("brace.new", max_concurrent=1, group_by=("h",))
        stored = 0
        for round_ in range(300):
            groups = [f"r{round_}-{i}" for i in range(rng.randint(2, 40))]
            mine = rng.sample(groups, rng.randint(2, len(groups)))
            theirs = rng.sample(groups, rng.randint(2, len(groups)))
            batches = await asyncio.gather(
                first.enqueue_many("brace.new", [{"h": g} for g in mine]),
                second.enqueue_many("brace.new", [{"h": g} for g in theirs]),
            )
            assert [len(b) for b in batches] == [len(mine), len(theirs)]
            stored += len(mine) + len(theirs)
        assert (await first.stats("brace.new", group="r0-0")).action == "brace.new"
    assert len(await fetch_rows(dsn, "brace.new")) == stored
