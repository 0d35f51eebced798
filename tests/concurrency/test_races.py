"""Several OS processes racing on one queue: the limit holds and seq order is commit order."""

from __future__ import annotations

import asyncio
import itertools

import psycopg
from helpers import assert_fifo_and_limit, fetch_rows, max_overlap
from racers import SPAWN, enqueue_in_transactions, enqueue_wait_complete, join_all, start

from fifoq import QueueManager, Status


async def test_processes_racing_with_enqueue_and_wait_keep_the_limit_and_fifo(dsn: str) -> None:
    processes, per_process, limit = 4, 100, 3
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("race.one", max_concurrent=limit, max_queue_length=100_000)
    start_line = SPAWN.Barrier(processes)
    racers = [
        start(enqueue_wait_complete, dsn, "race.one", per_process, start_line, seed)
        for seed in range(processes)
    ]
    await asyncio.to_thread(join_all, racers, 120)

    rows = await fetch_rows(dsn, "race.one")
    assert len(rows) == processes * per_process
    assert {r.status for r in rows} == {"succeeded"}
    assert len({r.owner for r in rows}) == processes  # every process took part
    assert_fifo_and_limit(rows, limit)
    # The queue was contended: the limit was reached, not merely respected.
    assert max_overlap(rows) == limit
    # Processes interleave in the queue (the race was real, not one after another).
    owners_in_seq_order = [r.owner for r in rows]
    switches = sum(a != b for a, b in itertools.pairwise(owners_in_seq_order))
    assert switches > processes * 5


async def test_seq_numbers_become_visible_in_order_while_processes_commit(dsn: str) -> None:
    """A later seq is never visible while an earlier one is still uncommitted.

    Three processes enqueue in transactions that stay open a little after the
    insert; an observer reads the queue over and over. Every snapshot must
    show seqs 1..n without a gap: seq order is commit order.
    """
    processes, per_process = 3, 60
    async with QueueManager.connect(dsn) as qm:
        await qm.set_policy("race.commit", max_concurrent=2, max_queue_length=100_000)
    start_line = SPAWN.Barrier(processes)
    writers = [
        start(enqueue_in_transactions, dsn, "race.commit", per_process, start_line, seed)
        for seed in range(processes)
    ]
    joined = asyncio.create_task(asyncio.to_thread(join_all, writers, 120))
    snapshots = 0
    gaps: list[list[int]] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer:
        while True:
            finished = joined.done()  # decided before the read, so the last read is complete
            cur = await observer.execute(
                "SELECT coalesce(array_agg(seq ORDER BY seq), '{}') FROM fifoq.execution_details"
                " WHERE action = 'race.commit'"
            )
            row = await cur.fetchone()
            assert row is not None
            seqs: list[int] = row[0]
            snapshots += 1
            if seqs != list(range(1, len(seqs) + 1)):
                gaps.append(seqs)
            if finished:
                break
    await joined
    assert not gaps, f"{len(gaps)} of {snapshots} snapshots had a gap, first: {gaps[0]}"
    assert len(seqs) == processes * per_process
    assert snapshots > 20  # the observer really watched the writers
    rows = await fetch_rows(dsn, "race.commit")
    assert_fifo_and_limit(rows, 2)
    assert sum(r.status == Status.ACTIVE for r in rows) == 2
