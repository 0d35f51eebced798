"""A worker told to stop, or an executor closed, while its database does not answer ends on time."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from helpers import count_of, wait_until
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fifoq import App, QueueManager, Status, Worker
from fifoq.manager import _CLOSE_TIMEOUT

from .proxy import BlackholeProxy

# What a stop may take on top of the grace period when nothing answers: the
# waits for the claim and the completion in flight and the settling of
# cancelled handlers and outcomes (5 s each), then closing the executor (5 s
# in all), with room for a loaded machine. Measured: 31 s with a grace period
# of 1 s when closing took 5 s per step, 26 s since.
BOUND_AFTER_GRACE = 45.0


async def test_a_stop_while_the_database_does_not_answer_keeps_to_its_bounds(dsn: str) -> None:
    release = asyncio.Event()
    app = App()

    @app.action("gone.job", max_concurrent=4)
    async def job(_: Any) -> dict[str, bool]:
        await release.wait()
        return {"ok": True}

    params = conninfo_to_dict(dsn)
    async with BlackholeProxy(str(params["host"]), int(str(params["port"]))) as proxy:
        proxied = make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))
        worker = Worker(app, proxied, concurrency=4, grace=1.0, claim_interval=0.2)
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.wait_ready(), timeout=30)
        async with QueueManager.connect(dsn, register_executor=False) as producer:
            ids = [(await producer.enqueue("gone.job", {"n": n})).id for n in range(2)]
            await wait_until(
                lambda: len(worker.running) == 2, timeout=10, message="both handlers running"
            )

            # The database goes silent: open connections swallow everything,
            # new ones are refused. The handlers then finish, and their
            # outcomes' statement waits for an answer that never comes.
            proxy.refuse_new = True
            proxy.blackhole()
            release.set()
            await wait_until(
                lambda: worker._completions is not None and worker._completions.busy,
                timeout=5,
                message="the outcomes' statement in flight",
            )
            stopped_at = time.monotonic()
            worker.stop()
            # Before the fix the stop waited for that statement with no limit.
            await asyncio.wait_for(run, timeout=worker.grace + BOUND_AFTER_GRACE)
            took = time.monotonic() - stopped_at

            # Their outcomes were sent and never confirmed: listed as such
            # (neither recorded nor handed back, as far as the worker knows).
            assert sorted(worker.unconfirmed) == ids
            assert worker.handed_back == []
            assert worker.completed == 0
            for execution_id in ids:
                assert (await producer.get(execution_id)).status is Status.ACTIVE
    print(f"\nstop with a silent database took {took:.1f} s (grace 1 s)")


def test_handle_signals_outside_the_main_thread_fails_run_and_wait_ready() -> None:
    app = App()

    @app.action("thread.job")
    async def job(_: Any) -> None:
        return None

    worker = Worker(app, "host=127.0.0.1 port=1")  # never reached: it fails before connecting
    errors: list[BaseException] = []

    async def main() -> None:
        run = asyncio.create_task(worker.run(handle_signals=True))
        try:
            await asyncio.wait_for(worker.wait_ready(), timeout=10)
        except RuntimeError as exc:
            errors.append(exc)
        with pytest.raises(RuntimeError):
            await run

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert len(errors) == 1 and "main thread" in str(errors[0])


async def test_a_claim_the_database_does_not_answer_does_not_hold_a_stop(dsn: str) -> None:
    app = App()

    @app.action("slow.job", max_concurrent=1)
    async def job(_: Any) -> None:
        return None

    worker = Worker(app, dsn, concurrency=1, grace=1.0, claim_interval=0.1)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.wait_ready(), timeout=30)
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        # The worker's next claim waits behind this lock for as long as the
        # holder keeps it: a database that does not answer it.
        await holder.execute("LOCK TABLE fifoq.executions IN ACCESS EXCLUSIVE MODE")

        async def claim_waits() -> bool:
            return (
                await count_of(
                    dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%claim_deferred%'",
                )
                > 0
            )

        await wait_until(claim_waits, timeout=10, message="a claim waiting for the lock")
        stopped_at = time.monotonic()
        worker.stop()
        try:
            # Before the fix the stop waited for the claim as long as the lock.
            await asyncio.wait_for(asyncio.shield(run), timeout=worker.grace + BOUND_AFTER_GRACE)
        finally:
            await holder.rollback()
            await asyncio.wait_for(run, timeout=30)
    print(f"\nstop with a claim stuck on a lock took {time.monotonic() - stopped_at:.1f} s")


async def test_a_claim_answered_during_the_stop_runs_its_work_under_the_grace_period(
    dsn: str,
) -> None:
    # A healthy database answers a claim in milliseconds, even when the stop
    # comes with no grace period at all: what the claim took must then be
    # started and handed back by name, not cut loose unlisted.
    app = App()

    @app.action("late.job", max_concurrent=3)
    async def job(_: Any) -> None:
        await asyncio.Event().wait()  # runs until cancelled

    async with QueueManager.connect(dsn, register_executor=False) as producer:
        await producer.set_policy("late.job", max_concurrent=3)
        ids = [(await producer.enqueue("late.job")).id for _ in range(3)]
        worker = Worker(app, dsn, concurrency=3, grace=0, claim_interval=0.1, apply_policies=False)
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            # The worker's first claim waits behind this lock.
            await holder.execute("LOCK TABLE fifoq.executions IN SHARE MODE")
            run = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.wait_ready(), timeout=30)
            await wait_until(
                lambda: count_of(
                    dsn,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%claim_deferred%'",
                ),
                timeout=10,
                message="a claim waiting for the lock",
            )
            worker.stop()
            await holder.rollback()  # the claim goes on, at once
            await asyncio.wait_for(run, timeout=30)
        assert sorted(worker.handed_back) == ids
        for execution_id in ids:
            assert (await producer.get(execution_id)).status is Status.ABANDONED


async def test_closing_an_executor_whose_database_does_not_answer_keeps_one_deadline(
    dsn: str,
) -> None:
    # Two of close()'s steps wait for the silent server here: the cancel a
    # cancelled waiter leaves behind, and unregistering. Each used to get
    # _CLOSE_TIMEOUT of its own (10 s and more in all); they share it now.
    params = conninfo_to_dict(dsn)
    async with (
        BlackholeProxy(str(params["host"]), int(str(params["port"]))) as proxy,
        QueueManager.connect(dsn, register_executor=False) as producer,
    ):
        await producer.set_policy("silent.job", max_concurrent=1)
        await producer.enqueue("silent.job")  # takes the one slot
        proxied = make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))
        executor = QueueManager.connect(proxied)
        qm = await executor.__aenter__()
        waiter = asyncio.create_task(qm.enqueue_and_wait("silent.job"))
        await wait_until(
            lambda: count_of(dsn, "SELECT count(*) FROM fifoq.executions WHERE status = 'queued'"),
            timeout=10,
            message="the waiter's execution queued",
        )
        proxy.refuse_new = True
        proxy.blackhole()
        waiter.cancel()  # leaves its cancel statement running, unanswered
        with pytest.raises(asyncio.CancelledError):
            await waiter
        closing_at = time.monotonic()
        await asyncio.wait_for(executor.__aexit__(None, None, None), timeout=60)
        took = time.monotonic() - closing_at
        assert took < _CLOSE_TIMEOUT + 3.0, f"close took {took:.1f} s"
    print(f"\nclose with a silent database took {took:.1f} s")
