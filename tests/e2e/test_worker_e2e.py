"""`fifoq worker` processes running real handlers: outcomes, cancellation, shutdown, FIFO."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import psycopg
from e2e_support import Workers
from helpers import assert_fifo_and_limit, fetch_rows, wait_until
from psycopg.conninfo import make_conninfo

from fifoq import Execution, QueueManager, Status


async def finished(qm: QueueManager, ids: list[int], timeout: float = 20) -> list[Execution]:
    """Wait until every execution is in a terminal status; return them in order."""

    async def all_done() -> list[Execution] | None:
        got = [await qm.get(i) for i in ids]
        return got if all(e.status.terminal for e in got) else None

    result = await wait_until(all_done, timeout, interval=0.05, message="executions finished")
    assert result is not None
    return result


def marker(tmp_path: Path, name: str, event: str) -> bool:
    return (tmp_path / f"{name}.{event}").exists()


async def test_results_and_failures_are_recorded(dsn: str, workers: Workers) -> None:
    workers.start()
    async with QueueManager.connect(dsn) as qm:
        echo = [(await qm.enqueue("e2e.echo", {"n": n})).id for n in range(5)]
        fail = [(await qm.enqueue("e2e.fail", {"n": n})).id for n in range(2)]
        odd = (await qm.enqueue("e2e.unserialisable", None)).id
        done = await finished(qm, [*echo, *fail, odd])
    for n, execution in enumerate(done[:5]):
        assert execution.status is Status.SUCCEEDED
        assert execution.result == {"echo": {"n": n}, "id": execution.id}
        assert execution.error is None
    for n, execution in enumerate(done[5:7]):
        assert execution.status is Status.FAILED
        assert execution.error == f"ValueError: bad input {n}"
        assert execution.result is None
    assert done[7].status is Status.FAILED
    assert done[7].error is not None
    assert done[7].error.startswith("InvalidInput: the handler's result was not stored")


async def test_handler_past_its_timeout_is_cancelled_and_fails(dsn: str, workers: Workers) -> None:
    workers.start()
    async with QueueManager.connect(dsn) as qm:
        slow = await qm.enqueue("e2e.timeout", {"seconds": 60})
        quick = await qm.enqueue("e2e.timeout", {"seconds": 0.01})
        assert quick.status is Status.QUEUED  # limit 1: behind the slow one
        slow_done, quick_done = await finished(qm, [slow.id, quick.id])
    assert slow_done.status is Status.FAILED
    assert slow_done.error is not None
    assert slow_done.error.startswith("TimeoutError: the handler ran longer than its timeout")
    assert slow_done.finished_at is not None and slow_done.started_at is not None
    ran = (slow_done.finished_at - slow_done.started_at).total_seconds()
    assert 0.5 <= ran < 10
    # The slot went to the next in line.
    assert quick_done.status is Status.SUCCEEDED
    assert quick_done.result == {"slept": 0.01}


async def test_cancel_stops_the_running_handler_and_the_slot_moves_on(
    dsn: str, workers: Workers, tmp_path: Path
) -> None:
    worker = workers.start()
    async with QueueManager.connect(dsn) as qm:
        long = await qm.enqueue("e2e.sleep", {"dir": str(tmp_path), "name": "long", "seconds": 60})
        nxt = await qm.enqueue("e2e.sleep", {"dir": str(tmp_path), "name": "next", "seconds": 0})
        await wait_until(lambda: marker(tmp_path, "long", "started"), 20, message="handler runs")
        assert not marker(tmp_path, "next", "started")  # limit 1
        asked = time.monotonic()
        assert await qm.cancel(long.id) is True
        await wait_until(
            lambda: marker(tmp_path, "long", "cancelled"), 5, message="handler task cancelled"
        )
        stopped_in = time.monotonic() - asked
        long_done, next_done = await finished(qm, [long.id, nxt.id])
    assert stopped_in < 2.0, f"the handler was cancelled {stopped_in:.2f} s after cancel()"
    assert long_done.status is Status.CANCELLED
    assert long_done.result is None and long_done.error is None  # not completed by the worker
    assert not marker(tmp_path, "long", "finished")
    assert next_done.status is Status.SUCCEEDED
    assert next_done.started_at is not None and long_done.finished_at is not None
    assert next_done.started_at >= long_done.finished_at
    assert "was cancelled while running" in worker.log_text()


async def test_sigterm_lets_a_running_handler_finish_and_takes_no_new_work(
    dsn: str, workers: Workers, tmp_path: Path
) -> None:
    worker = workers.start("--grace", "30")
    async with QueueManager.connect(dsn) as qm:
        running = await qm.enqueue(
            "e2e.sleep", {"dir": str(tmp_path), "name": "running", "seconds": 1.0}
        )
        await wait_until(lambda: marker(tmp_path, "running", "started"), 20, message="started")
        worker.signal(signal.SIGTERM)
        later = await qm.enqueue("e2e.sleep", {"dir": str(tmp_path), "name": "later", "seconds": 0})
        code = await asyncio.to_thread(worker.wait, 30)
        done = await qm.get(running.id)
        left = await qm.get(later.id)
    assert code == 0, worker.log_text()
    assert done.status is Status.SUCCEEDED
    assert done.result == {"slept": 1.0}
    assert marker(tmp_path, "running", "finished")
    # Admitted when the slot was freed, but the stopping worker did not take it.
    assert left.status is Status.ACTIVE
    assert left.owner is None
    assert not marker(tmp_path, "later", "started")
    assert "handing back" not in worker.log_text()


async def test_sigterm_hands_back_what_does_not_finish_within_the_grace_period(
    dsn: str, workers: Workers, tmp_path: Path
) -> None:
    worker = workers.start("--grace", "0.5")
    async with QueueManager.connect(dsn) as qm:
        stuck = await qm.enqueue(
            "e2e.sleep", {"dir": str(tmp_path), "name": "stuck", "seconds": 60}
        )
        behind = await qm.enqueue(
            "e2e.sleep", {"dir": str(tmp_path), "name": "behind", "seconds": 0}
        )
        await wait_until(lambda: marker(tmp_path, "stuck", "started"), 20, message="started")
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 30)
        handed_back = await qm.get(stuck.id)
        nxt = await qm.get(behind.id)
    assert code == 0, worker.log_text()
    assert marker(tmp_path, "stuck", "cancelled")
    assert handed_back.status is Status.ABANDONED  # terminal: it is not run again
    assert (
        "handing back 1 execution(s) still running when the worker stopped (the grace "
        f"period ran out, or a second signal came): {stuck.id}" in (worker.log_text())
    )
    # Its slot was freed: the next in line was admitted (nobody claims it now).
    assert nxt.status is Status.ACTIVE


async def test_a_handler_that_ignores_cancellation_does_not_keep_the_worker_alive(
    dsn: str, workers: Workers, tmp_path: Path
) -> None:
    # After the grace period and the time given to cancelled handlers to
    # unwind (5 + 5 s), the worker hands the execution back and exits; it
    # used to wait for the handler (60 s here) and then log a traceback.
    worker = workers.start("--grace", "0.5")
    async with QueueManager.connect(dsn) as qm:
        execution = await qm.enqueue(
            "e2e.stubborn", {"dir": str(tmp_path), "name": "stubborn", "seconds": 60}
        )
        await wait_until(lambda: marker(tmp_path, "stubborn", "started"), 20, message="started")
        worker.signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 30)
        handed_back = await qm.get(execution.id)
    log = worker.log_text()
    assert code == 0, log
    assert marker(tmp_path, "stubborn", "ignored")
    assert handed_back.status is Status.ABANDONED
    assert f"handler(s) of execution(s) {execution.id} ignore cancellation" in log
    assert f"or a second signal came): {execution.id};" in log
    assert "Traceback" not in log


async def test_sigkilled_worker_is_reaped_and_another_worker_runs_the_next(
    dsn: str, workers: Workers, tmp_path: Path
) -> None:
    doomed = workers.start()
    async with QueueManager.connect(dsn, poll_interval=0.2) as qm:
        first = await qm.enqueue(
            "e2e.sleep", {"dir": str(tmp_path), "name": "first", "seconds": 60}
        )
        second = await qm.enqueue(
            "e2e.sleep", {"dir": str(tmp_path), "name": "second", "seconds": 0}
        )
        await wait_until(lambda: marker(tmp_path, "first", "started"), 20, message="started")
        doomed.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        workers.start()
        first_done, second_done = await finished(qm, [first.id, second.id], timeout=30)
        recovered_in = time.monotonic() - killed_at
    assert first_done.status is Status.ABANDONED
    assert second_done.status is Status.SUCCEEDED
    assert second_done.owner != first_done.owner
    assert recovered_in < 15, f"took {recovered_in:.1f} s"


async def test_two_worker_processes_keep_the_limit_and_fifo_order(
    dsn: str, workers: Workers
) -> None:
    # Slots offered to both workers every time (--keep-slot-under 0), so the
    # two race for every admission; by default a worker whose handler was
    # quick keeps its slot, and one worker could run everything.
    workers.start("--concurrency", "4", "--keep-slot-under", "0")
    workers.start("--concurrency", "4", "--keep-slot-under", "0")
    async with QueueManager.connect(dsn) as qm:

        async def produce(start: int) -> list[int]:
            return [(await qm.enqueue("e2e.limit", {"i": i})).id for i in range(start, start + 60)]

        batches = await asyncio.gather(produce(0), produce(1000), produce(2000))
        done = await finished(qm, [i for batch in batches for i in batch], timeout=60)
    assert all(e.status is Status.SUCCEEDED for e in done)
    rows = await fetch_rows(dsn, "e2e.limit")
    assert len(rows) == 180
    assert_fifo_and_limit(rows, 3)
    owners = {r.owner for r in rows}
    assert len(owners) == 2, f"expected both workers to run some, got owners {owners}"


async def test_a_worker_starts_handlers_in_seq_order(
    dsn: str, workers: Workers, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    async with QueueManager.connect(dsn) as qm:
        # The app's policy, set before the work exists: 10 admitted at once,
        # 30 waiting; the worker (5 at a time) must start them by seq.
        await qm.set_policy("e2e.order", max_concurrent=10)
        ids = [(await qm.enqueue("e2e.order", {"i": i, "log": str(log)})).id for i in range(40)]
        workers.start("--concurrency", "5")
        done = await finished(qm, ids, timeout=60)
    assert all(e.status is Status.SUCCEEDED for e in done)
    started = [int(line) for line in log.read_text().split()]
    assert started == list(range(40))


async def test_worker_applies_the_apps_policies(dsn: str, workers: Workers) -> None:
    workers.start("--actions", "e2e.echo,e2e.limit")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT action, max_concurrent FROM fifoq.policies ORDER BY action"
        )
        policies = await cur.fetchall()
    # Only the selected actions' policies: a worker applies what it runs.
    assert policies == [("e2e.echo", 3), ("e2e.limit", 3)]


async def test_worker_logs_json_lines_without_the_password(dsn: str, tmp_path: Path) -> None:
    # The test server trusts local connections, so a password is accepted and unused.
    secret = "topsecret-41c7"
    with_password = make_conninfo(dsn, password=secret)
    pool = Workers(with_password, tmp_path)
    try:
        worker = pool.start("--log-json", "--log-level", "info")
        async with QueueManager.connect(dsn) as qm:
            failing = await qm.enqueue("e2e.fail", {"n": 7})
            await finished(qm, [failing.id])
    finally:
        pool.stop_all()
    text = worker.log_text()
    assert secret not in text
    entries = [json.loads(line) for line in text.splitlines()]
    ready = [e for e in entries if e["message"].startswith("worker ready")]
    assert ready and "password=***" in ready[0]["message"]
    assert {"time", "level", "logger", "message", "pid"} <= set(ready[0])
    assert any(
        e["logger"] == "fifoq.worker" and "ValueError: bad input 7" in e["message"] for e in entries
    )


async def test_worker_finds_admitted_work_that_was_never_announced(
    dsn: str, workers: Workers
) -> None:
    workers.start()
    # An admitted execution written without NOTIFY (as if the notification
    # was lost): only the worker's periodic claim can find it.
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO fifoq.queues (action) VALUES ('e2e.echo') "
            "ON CONFLICT (action, group_key) DO UPDATE SET action = EXCLUDED.action "
            "RETURNING id"
        )
        row = await cur.fetchone()
        assert row is not None
        queue_id = row[0]
        await conn.execute("SELECT pg_advisory_xact_lock(1718183537, %s)", (queue_id,))
        cur = await conn.execute(
            "UPDATE fifoq.queues SET last_seq = last_seq + 1, active_count = active_count + 1,"
            " total_enqueued = total_enqueued + 1 WHERE id = %s RETURNING last_seq",
            (queue_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        cur = await conn.execute(
            "INSERT INTO fifoq.executions (seq, queue_id, status, started_at, payload)"
            " VALUES (%s, %s, 'active', clock_timestamp(), '{\"silent\": true}')"
            " RETURNING id",
            (row[0], queue_id),
        )
        row = await cur.fetchone()
        assert row is not None
        silent_id = row[0]
    async with QueueManager.connect(dsn) as qm:
        (done,) = await finished(qm, [silent_id], timeout=10)
    assert done.status is Status.SUCCEEDED
    assert done.result == {"echo": {"silent": True}, "id": silent_id}
