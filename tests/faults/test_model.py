"""Model-based test: random operation sequences against an in-memory reference queue model.

Hypothesis drives a state machine through enqueues (several actions, groups and
owners), completions, cancellations, time-outs (a waiter giving up, and the
database deadline enforced by ``fifoq.maintain``), policy changes (limits,
queue lengths, ``on_limit``, at action, pack and default level), executor
death (a lease running out, a QueueManager closing) and worker claims. Most
steps call the SQL functions over a plain connection; some go through the
asyncio API on a loop owned by the state machine. After every step the whole
database state -- every status and owner, each queue's waiting order, active
count, counters and live statistics -- must equal the model's.

The model is the one a reader would write from SPEC §3: per queue a FIFO list
of waiting executions and a set of active ones; whenever a queue has waiters
and fewer active than its limit, the head moves to active.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql
from psycopg.rows import dict_row

from fifoq import (
    ExecutionAbandoned,
    ExecutionCancelled,
    ExecutorGone,
    FifoqError,
    InvalidPolicy,
    InvalidTransition,
    PolicyRejected,
    QueueFull,
    QueueManager,
    QueueTimeout,
)
from fifoq.errors import wrap_database_errors

ACTIONS = ("pk.a", "pk.b", "solo")
GROUPS = ("", "g")
PATTERNS = ("pk.a", "pk.*", "*", "solo")
LEASE_FOREVER = 3600.0  # fake executors never expire unless a rule says so

Key = tuple[str, str]


@dataclass
class MExecution:
    """An execution as the model knows it."""

    id: int
    key: Key
    seq: int
    status: str
    owner: int | None


@dataclass
class MQueue:
    """One (action, group) queue of the model."""

    waiting: list[int] = field(default_factory=list)
    active: list[int] = field(default_factory=list)
    last_seq: int = 0
    totals: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class MPolicy:
    """The policy fields the model needs."""

    max_concurrent: int
    max_queue_length: int
    on_limit: str


class Model:
    """SPEC §3 in a few lines: FIFO lists, active sets, limits."""

    def __init__(self) -> None:
        self.executions: dict[int, MExecution] = {}
        self.queues: dict[Key, MQueue] = {}  # insertion order = queue id order
        self.policies: dict[str, MPolicy] = {}

    def policy_for(self, action: str) -> MPolicy | None:
        pack = action.split(".", 1)[0] + ".*" if "." in action else None  # no dot: no pack
        for pattern in (action, pack, "*"):
            if pattern is not None and pattern in self.policies:
                return self.policies[pattern]
        return None

    def limit(self, key: Key) -> int | None:
        policy = self.policy_for(key[0])
        return policy.max_concurrent if policy else None

    def must_wait(self, key: Key) -> bool:
        queue = self.queues.get(key, MQueue())
        limit = self.limit(key)
        return bool(queue.waiting) or (limit is not None and len(queue.active) >= limit)

    def check_enqueue(self, key: Key) -> type[FifoqError] | None:
        """The error an enqueue into this queue must raise now, or None."""
        policy = self.policy_for(key[0])
        if policy is None or not self.must_wait(key):
            return None
        if policy.on_limit == "reject":
            return PolicyRejected
        if len(self.queues[key].waiting) >= policy.max_queue_length:
            return QueueFull
        return None

    def enqueue(self, execution_id: int, key: Key, owner: int | None) -> MExecution:
        wait = self.must_wait(key)
        queue = self.queues.setdefault(key, MQueue())
        queue.last_seq += 1
        queue.totals["enqueued"] += 1
        status = "queued" if wait else "active"
        execution = MExecution(execution_id, key, queue.last_seq, status, owner)
        self.executions[execution_id] = execution
        (queue.waiting if wait else queue.active).append(execution_id)
        return execution

    def admit(self, key: Key) -> None:
        queue = self.queues[key]
        limit = self.limit(key)
        while queue.waiting and (limit is None or len(queue.active) < limit):
            head = queue.waiting.pop(0)
            self.executions[head].status = "active"
            queue.active.append(head)

    def admit_all(self) -> None:
        for key in self.queues:
            self.admit(key)

    def finish(self, execution_id: int, status: str) -> None:
        """Move a queued or active execution to a terminal status and hand its slot on."""
        execution = self.executions[execution_id]
        queue = self.queues[execution.key]
        if execution.status == "queued":
            queue.waiting.remove(execution_id)
        else:
            queue.active.remove(execution_id)
        execution.status = status
        queue.totals[status] += 1
        self.admit(execution.key)

    def live(self, *statuses: str) -> list[MExecution]:
        return [e for e in self.executions.values() if e.status in statuses]

    def abandon_owned(self, executor_id: int) -> None:
        for execution in self.live("queued", "active"):
            if execution.owner == executor_id:
                self.finish(execution.id, "abandoned")

    def claim(self, executor_id: int, actions: list[str] | None, limit: int) -> list[int]:
        taken: list[int] = []
        for key, queue in self.queues.items():
            if len(taken) >= limit:
                break
            if actions is not None and key[0] not in actions:
                continue
            unowned = sorted(
                (i for i in queue.active if self.executions[i].owner is None),
                key=lambda i: self.executions[i].seq,
            )
            for execution_id in unowned[: limit - len(taken)]:
                self.executions[execution_id].owner = executor_id
                taken.append(execution_id)
        return taken


class FifoqMachine(RuleBasedStateMachine):
    """Drives fifoq and the model with the same random operations and compares them."""

    dsn: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        # Start every example from an empty schema (DELETE: the tables are tiny,
        # and TRUNCATE costs more than the whole example).
        for table in ("executions", "queues", "policies", "executors"):
            self.conn.execute(sql.SQL("DELETE FROM fifoq.{}").format(sql.Identifier(table)))
        self.model = Model()
        self.fakes = [self._register_fake(), self._register_fake()]
        self.dead: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.qm_context: Any = None
        self.qm = self._open_manager()

    # -- plumbing ----------------------------------------------------------

    def _register_fake(self) -> int:
        row = self.sql(
            "SELECT fifoq.register_executor('model', 'model-host', 0, %s) AS id", LEASE_FOREVER
        )
        return int(row[0]["id"])

    def _open_manager(self) -> QueueManager:
        # A long lease: while hypothesis thinks between steps the loop does not
        # run and the manager cannot heartbeat; it must not count as dead then.
        self.qm_context = QueueManager.connect(
            self.dsn, name="model-api", lease=LEASE_FOREVER, poll_interval=0.05, max_size=2
        )
        manager: QueueManager = self.run(self.qm_context.__aenter__())
        return manager

    def _close_manager(self) -> None:
        if self.qm_context is not None:
            context, self.qm_context = self.qm_context, None
            self.run(context.__aexit__(None, None, None))

    def run(self, coro: Any) -> Any:
        # A bound, so that a hang fails the example instead of the whole run.
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def sql(self, text: Any, *params: Any) -> list[dict[str, Any]]:
        with wrap_database_errors():
            cur = self.conn.execute(text, params)
            return cur.fetchall() if cur.description else []

    def maintain(self) -> dict[str, int]:
        """Run one maintenance pass ourselves (the manager's own pass may hold the lock)."""
        for _ in range(1000):
            summary = self.sql("SELECT fifoq.maintain() AS s")[0]["s"]
            if summary is not None:
                return dict(summary)
        raise AssertionError("fifoq.maintain() never got its lock")

    def teardown(self) -> None:
        try:
            self._close_manager()
        finally:
            self.loop.close()
            self.conn.close()

    def owners(self) -> list[int | None]:
        return [None, *self.fakes, self.qm.executor_id]

    def expect_enqueue(self, key: Key, owner: int | None, call: Any) -> None:
        """Run an enqueue (``call()`` returns its row) and apply or check the model's verdict."""
        error = self.model.check_enqueue(key)
        if error is not None:
            with pytest.raises(error):
                call()
            return
        row = call()
        expected = self.model.enqueue(row["id"], key, owner)
        assert (row["seq"], str(row["status"])) == (expected.seq, expected.status)

    # -- enqueue -----------------------------------------------------------

    @rule(
        action=st.sampled_from(ACTIONS),
        group=st.sampled_from(GROUPS),
        owner_index=st.integers(0, 3),
    )
    def sql_enqueue(self, action: str, group: str, owner_index: int) -> None:
        owner = self.owners()[owner_index]

        def call() -> dict[str, Any]:
            return self.sql(
                "SELECT * FROM fifoq.enqueue(%s, %s::jsonb, %s, %s)",
                action,
                '{"k": 1}',
                group or None,
                owner,
            )[0]

        self.expect_enqueue((action, group), owner, call)

    @rule(action=st.sampled_from(ACTIONS), group=st.sampled_from(GROUPS))
    def api_enqueue(self, action: str, group: str) -> None:
        def call() -> dict[str, Any]:
            execution = self.run(self.qm.enqueue(action, {"api": True}, group=group or None))
            return {"id": execution.id, "seq": execution.seq, "status": execution.status}

        self.expect_enqueue((action, group), None, call)

    @rule(action=st.sampled_from(ACTIONS), group=st.sampled_from(GROUPS))
    def api_enqueue_and_wait_times_out(self, action: str, group: str) -> None:
        # Nothing else runs while we wait, so a waiting execution cannot start:
        # it must come back timed_out (SPEC: the waiter gives up in the database too).
        key = (action, group)
        error = self.model.check_enqueue(key)
        if error is not None:
            with pytest.raises(error):
                self.run(self.qm.enqueue_and_wait(action, group=group or None, timeout=0.05))
            return
        if self.model.must_wait(key):
            with pytest.raises(QueueTimeout):
                self.run(self.qm.enqueue_and_wait(action, group=group or None, timeout=0.05))
            (row,) = self.sql(
                "SELECT id FROM fifoq.executions ORDER BY id DESC LIMIT 1"
            )  # the one just made
            self.model.enqueue(row["id"], key, self.qm.executor_id)
            self.model.finish(row["id"], "timed_out")
        else:
            execution = self.run(
                self.qm.enqueue_and_wait(action, group=group or None, timeout=0.05)
            )
            expected = self.model.enqueue(execution.id, key, self.qm.executor_id)
            assert execution.status == "active" and execution.seq == expected.seq

    @precondition(lambda self: bool(self.dead))
    @rule(action=st.sampled_from(ACTIONS), data=st.data())
    def enqueue_owned_by_dead_executor(self, action: str, data: st.DataObject) -> None:
        # An owner that is gone would never be reaped again: its slot would leak.
        # A full queue or a rejecting policy may say no first; either way
        # nothing is stored (the invariant checks that).
        dead = data.draw(st.sampled_from(self.dead))
        error = self.model.check_enqueue((action, ""))
        with pytest.raises(ExecutorGone if error is None else (ExecutorGone, error)):
            self.sql("SELECT * FROM fifoq.enqueue(%s, NULL, NULL, %s)", action, dead)

    # -- finishing ---------------------------------------------------------

    @precondition(lambda self: bool(self.model.executions))
    @rule(data=st.data(), failed=st.booleans(), via_api=st.booleans())
    def complete(self, data: st.DataObject, failed: bool, via_api: bool) -> None:
        # Prefer active executions, but also try finished and waiting ones: a
        # wrong transition must fail and free nothing.
        active = [e.id for e in self.model.live("active")]
        prefer_active: bool = data.draw(st.booleans())
        pool = active if active and prefer_active else list(self.model.executions)
        execution_id = data.draw(st.sampled_from(pool))
        error = "boom" if failed else None

        def call() -> None:
            if via_api:
                self.run(self.qm.complete(execution_id, result={"r": 1}, error=error))
            else:
                self.sql("SELECT fifoq.complete(%s, '{}'::jsonb, %s)", execution_id, error)

        if self.model.executions[execution_id].status != "active":
            with pytest.raises(InvalidTransition):
                call()
            return
        call()
        self.model.finish(execution_id, "failed" if failed else "succeeded")

    @precondition(lambda self: bool(self.model.executions))
    @rule(data=st.data(), via_api=st.booleans())
    def cancel(self, data: st.DataObject, via_api: bool) -> None:
        execution_id = data.draw(st.sampled_from(list(self.model.executions)))
        if via_api:
            cancelled = self.run(self.qm.cancel(execution_id))
        else:
            cancelled = self.sql("SELECT fifoq.cancel(%s) AS c", execution_id)[0]["c"]
        expected = self.model.executions[execution_id].status in ("queued", "active")
        assert cancelled is expected
        if expected:
            self.model.finish(execution_id, "cancelled")

    @precondition(lambda self: bool(self.model.executions))
    @rule(data=st.data())
    def waiter_gives_up(self, data: st.DataObject) -> None:
        # fifoq.time_out is what a waiter calls when its own timeout passes.
        execution_id = data.draw(st.sampled_from(list(self.model.executions)))
        row = self.sql("SELECT * FROM fifoq.time_out(%s)", execution_id)[0]
        if self.model.executions[execution_id].status == "queued":
            self.model.finish(execution_id, "timed_out")
        assert str(row["status"]) == self.model.executions[execution_id].status

    @precondition(lambda self: bool(self.model.live("queued")))
    @rule(data=st.data())
    def deadline_passes(self, data: st.DataObject) -> None:
        # The queue_timeout deadline, enforced by the maintenance pass whether or
        # not anyone waits.
        execution_id = data.draw(st.sampled_from([e.id for e in self.model.live("queued")]))
        self.sql(
            "UPDATE fifoq.executions SET deadline = clock_timestamp() - interval '1 s'"
            " WHERE id = %s",
            execution_id,
        )
        # Our pass or the manager's own (it runs one every poll interval) does it.
        summary = self.maintain()
        assert summary["admitted"] == 0
        self.model.finish(execution_id, "timed_out")

    # -- owners and workers -------------------------------------------------

    @precondition(lambda self: bool(self.model.executions))
    @rule(data=st.data(), fake=st.integers(0, 1))
    def watch(self, data: st.DataObject, fake: int) -> None:
        execution_id = data.draw(st.sampled_from(list(self.model.executions)))
        executor = self.fakes[fake]
        execution = self.model.executions[execution_id]
        live = execution.status in ("queued", "active")
        if live and execution.owner not in (None, executor):
            with pytest.raises(InvalidTransition):
                self.sql("SELECT * FROM fifoq.watch(%s, %s)", execution_id, executor)
            return
        self.sql("SELECT * FROM fifoq.watch(%s, %s)", execution_id, executor)
        if live:
            execution.owner = executor

    @precondition(lambda self: bool(self.model.live("queued", "active")))
    @rule(data=st.data())
    def api_wait_started(self, data: st.DataObject) -> None:
        candidates = [
            e.id
            for e in self.model.live("queued", "active")
            if e.owner in (None, self.qm.executor_id)
        ]
        if not candidates:
            return
        execution = self.model.executions[data.draw(st.sampled_from(candidates))]
        if execution.status == "active":
            started = self.run(self.qm.wait_started(execution.id, timeout=0.05))
            assert started.status == "active" and started.seq == execution.seq
            execution.owner = self.qm.executor_id
        else:
            with pytest.raises(QueueTimeout):
                self.run(self.qm.wait_started(execution.id, timeout=0.05))
            execution.owner = self.qm.executor_id
            self.model.finish(execution.id, "timed_out")

    @precondition(lambda self: bool(self.model.executions))
    @rule(data=st.data())
    def api_wait_on_finished(self, data: st.DataObject) -> None:
        finished = [
            e for e in self.model.executions.values() if e.status not in ("queued", "active")
        ]
        if not finished:
            return
        execution = data.draw(st.sampled_from(finished))
        expected: type[FifoqError] = {
            "cancelled": ExecutionCancelled,
            "timed_out": QueueTimeout,
            "abandoned": ExecutionAbandoned,
        }.get(execution.status, InvalidTransition)
        with pytest.raises(expected):
            self.run(self.qm.wait_started(execution.id, timeout=0.05))

    @rule(
        fake=st.integers(0, 1),
        actions=st.none() | st.lists(st.sampled_from(ACTIONS), min_size=1, unique=True),
        limit=st.integers(1, 4),
    )
    def claim(self, fake: int, actions: list[str] | None, limit: int) -> None:
        executor = self.fakes[fake]
        rows = self.sql("SELECT id FROM fifoq.claim(%s, %s, %s)", executor, actions, limit)
        assert [r["id"] for r in rows] == self.model.claim(executor, actions, limit)

    @rule(fake=st.integers(0, 1))
    def executor_lease_runs_out(self, fake: int) -> None:
        # Process death as the others see it: no heartbeat for longer than the
        # lease. The next maintenance pass reaps it and hands its slots on.
        executor = self.fakes[fake]
        self.sql(
            "UPDATE fifoq.executors SET lease = 0.001,"
            " heartbeat_at = clock_timestamp() - interval '1 min' WHERE id = %s",
            executor,
        )
        self.maintain()  # or the manager's own pass got there first
        (gone,) = self.sql("SELECT end_reason FROM fifoq.executors WHERE id = %s", executor)
        assert gone["end_reason"] == "lease expired"
        self.model.abandon_owned(executor)
        self.dead.append(executor)
        self.fakes[fake] = self._register_fake()

    @rule()
    def manager_closes(self) -> None:
        executor = self.qm.executor_id
        self._close_manager()
        self.model.abandon_owned(executor)
        self.dead.append(executor)
        self.qm = self._open_manager()

    # -- policies and statistics ---------------------------------------------

    @rule(
        pattern=st.sampled_from(PATTERNS),
        max_concurrent=st.integers(1, 3),
        max_queue_length=st.integers(0, 4) | st.just(10_000),
        on_limit=st.sampled_from(["enqueue", "enqueue", "enqueue", "reject"]),
        via_api=st.booleans(),
    )
    def set_policy(
        self, pattern: str, max_concurrent: int, max_queue_length: int, on_limit: str, via_api: bool
    ) -> None:
        if via_api:
            self.run(
                self.qm.set_policy(
                    pattern,
                    max_concurrent=max_concurrent,
                    max_queue_length=max_queue_length,
                    on_limit=on_limit,
                )
            )
        else:
            self.sql(
                "SELECT fifoq.set_policy(%s, %s, %s, 3600.0, %s)",
                pattern,
                max_concurrent,
                max_queue_length,
                on_limit,
            )
        self.model.policies[pattern] = MPolicy(max_concurrent, max_queue_length, on_limit)
        # A raised limit admits at once; a lowered one preempts nobody.
        self.model.admit_all()

    @rule(
        pattern=st.sampled_from(PATTERNS),
        bad=st.sampled_from(
            [
                {"max_concurrent": 0},
                {"max_concurrent": -1},
                {"max_concurrent": 2**31},
                {"max_concurrent": 2**63},
                {"max_concurrent": 1, "max_queue_length": -1},
                {"max_concurrent": 1, "max_queue_length": 2**31},
                {"max_concurrent": 1, "on_limit": "drop"},
                {"max_concurrent": 1, "queue_timeout": 0},
            ]
        ),
    )
    def invalid_policy_changes_nothing(self, pattern: str, bad: dict[str, Any]) -> None:
        with pytest.raises(InvalidPolicy):
            self.run(self.qm.set_policy(pattern, **bad))
        if bad["max_concurrent"] < 2**31 and bad.get("max_queue_length", 0) < 2**31:
            # The SQL function checks too, for SQL callers.
            with pytest.raises(InvalidPolicy):
                self.sql(
                    "SELECT fifoq.set_policy(%s, %s::int, %s::int, %s::float8, %s)",
                    pattern,
                    bad["max_concurrent"],
                    bad.get("max_queue_length", 10),
                    bad.get("queue_timeout", 10.0),
                    bad.get("on_limit", "enqueue"),
                )

    @rule()
    def refresh_stats(self) -> None:
        self.run(self.qm.refresh_stats())
        snapshot = {(s.action, s.group): s for s in self.run(self.qm.snapshot_stats())}
        live = {(s.action, s.group): s for s in self.run(self.qm.live_stats())}
        assert snapshot.keys() == live.keys()
        for key, stats in live.items():
            assert {**vars_of(snapshot[key]), "last_updated": None} == {
                **vars_of(stats),
                "last_updated": None,
            }

    # -- the comparison ------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        rows = self.sql(
            'SELECT id, action, "group", seq, status::text AS status, owner, started_at,'
            " enqueued_at FROM fifoq.execution_details ORDER BY id"
        )
        actual = {
            r["id"]: ((r["action"], r["group"]), r["seq"], r["status"], r["owner"]) for r in rows
        }
        expected = {e.id: (e.key, e.seq, e.status, e.owner) for e in self.model.executions.values()}
        assert actual == expected

        by_queue: dict[Key, list[dict[str, Any]]] = {}
        for r in rows:
            by_queue.setdefault((r["action"], r["group"]), []).append(r)
        stats = {
            (s["action"], s["group"]): s for s in self.sql("SELECT * FROM fifoq.queue_stats_live")
        }
        assert stats.keys() == self.model.queues.keys()
        for key, queue in self.model.queues.items():
            in_seq = sorted(by_queue.get(key, []), key=lambda r: r["seq"])
            assert [r["id"] for r in in_seq if r["status"] == "queued"] == queue.waiting, key
            started = [r["started_at"] for r in in_seq if r["started_at"] is not None]
            assert started == sorted(started), f"{key}: started_at decreases in seq order"
            s = stats[key]
            head = queue.waiting[0] if queue.waiting else None
            oldest = next((r["enqueued_at"] for r in in_seq if r["id"] == head), None)
            assert {
                "queue_length": s["queue_length"],
                "active_count": s["active_count"],
                "max_concurrent": s["max_concurrent"],
                "oldest_enqueued_at": s["oldest_enqueued_at"],
                "total_enqueued": s["total_enqueued"],
                "total_completed": s["total_completed"],
                "total_failed": s["total_failed"],
                "total_cancelled": s["total_cancelled"],
                "total_timed_out": s["total_timed_out"],
                "total_abandoned": s["total_abandoned"],
            } == {
                "queue_length": len(queue.waiting),
                "active_count": len(queue.active),
                "max_concurrent": self.model.limit(key),
                "oldest_enqueued_at": oldest,
                "total_enqueued": queue.totals["enqueued"],
                "total_completed": queue.totals["succeeded"] + queue.totals["failed"],
                "total_failed": queue.totals["failed"],
                "total_cancelled": queue.totals["cancelled"],
                "total_timed_out": queue.totals["timed_out"],
                "total_abandoned": queue.totals["abandoned"],
            }, key
            # Work conservation: nobody waits while a slot is free.
            limit = self.model.limit(key)
            assert not (queue.waiting and limit is not None and len(queue.active) < limit)


def vars_of(stats: Any) -> dict[str, Any]:
    """A QueueStats as a plain dict."""
    return {name: getattr(stats, name) for name in stats.__dataclass_fields__}


def _run(dsn: str, max_examples: int, steps: int) -> None:
    machine = type("Machine", (FifoqMachine,), {"dsn": dsn})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


def test_random_operations_match_the_reference_model(dsn: str) -> None:
    _run(dsn, max_examples=30, steps=30)


@pytest.mark.soak
@pytest.mark.timeout(1800)  # longer than the suite-wide 300 s
def test_random_operations_match_the_reference_model_soak(dsn: str) -> None:
    _run(dsn, max_examples=300, steps=60)
