"""EXPLAIN guard: the hot queries keep using the indexes made for them.

The plans are those of the real statements inside fifoq's functions, caught
with auto_explain (log_nested_statements) while the functions run, so the
guard follows the function bodies instead of copies of their SQL. The table
holds 50,000 finished executions, so a lost index shows as a sequential scan
or another index, and an index regression fails here instead of in
production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from fifoq.queries import query

HISTORY_PER_QUEUE = 2_500
ACTIONS = 20

_SETUP = """
SELECT count(fifoq.set_policy('perf.' || a, 2, 100000)) FROM generate_series(1, %(actions)s) a;
SELECT count(fifoq.set_policy('perf.bare', 5, 100000));
SELECT count(fifoq.ensure_queue('perf.' || a, '')) FROM generate_series(1, %(actions)s) a;
-- Finished history, written directly: the rows every hot query must not scan.
INSERT INTO fifoq.executions (queue_id, seq, status, enqueued_at, started_at, finished_at)
SELECT q.id, s.n, 'succeeded', now() - interval '1 day', now() - interval '1 day',
       now() - interval '1 day'
FROM fifoq.queues q CROSS JOIN generate_series(1, %(history)s) AS s(n);
UPDATE fifoq.queues
SET last_seq = %(history)s, total_enqueued = %(history)s, total_succeeded = %(history)s;
"""

_LIVE = """
-- Per action two active and twenty waiting executions, owned by one executor;
-- five admitted ones nobody owns (for claim) and five waiting behind them.
SELECT count(fifoq.enqueue('perf.' || a, NULL, NULL, %(executor)s))
FROM generate_series(1, %(actions)s) a, generate_series(1, 22) n;
SELECT count(fifoq.enqueue('perf.bare', NULL, NULL, NULL)) FROM generate_series(1, 10);
"""


def _set_up(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        params = {"actions": ACTIONS, "history": HISTORY_PER_QUEUE}
        for statement in _SETUP.split(";\n"):
            if statement.strip():
                conn.execute(statement, params)
        row = conn.execute("SELECT fifoq.register_executor('perf', 'test', 0, 3600)").fetchone()
        assert row is not None
        executor = int(row[0])
        for statement in _LIVE.split(";\n"):
            if statement.strip():
                conn.execute(statement, {**params, "executor": executor})
        conn.execute("ANALYZE fifoq.executions")
        conn.execute("ANALYZE fifoq.queues")
    return executor


class PlanCatcher:
    """A connection whose statements, nested ones included, report their plans."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.plans: list[dict[str, Any]] = []
        conn.add_notice_handler(self._on_notice)

    def _on_notice(self, diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        _, found, body = message.partition("plan:\n")
        if found:
            self.plans.append(json.loads(body))

    def run(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a statement; the plans of everything it executed."""
        self.plans.clear()
        self.conn.execute(sql, params or {})  # type: ignore[arg-type]
        return list(self.plans)


@pytest.fixture
def setup(dsn: str) -> Iterator[tuple[PlanCatcher, int]]:
    """A database with history and live executions, and a plan-catching connection."""
    executor = _set_up(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield _catching(conn), executor


def _catching(conn: psycopg.Connection[Any]) -> PlanCatcher:
    """Have auto_explain report every plan on ``conn`` (skips the test where it cannot)."""
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:
        pytest.skip(f"auto_explain cannot be loaded here: {exc}")
    for name, value in {
        "auto_explain.log_min_duration": "0",
        "auto_explain.log_nested_statements": "on",
        "auto_explain.log_format": "json",
        "client_min_messages": "log",
    }.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return PlanCatcher(conn)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _select(plans: list[dict[str, Any]], *needles: str) -> list[dict[str, Any]]:
    return [p for p in plans if all(n in _normal(p["Query Text"]) for n in needles)]


def _index_names(node: dict[str, Any]) -> Iterator[str]:
    if "Index Name" in node:
        yield node["Index Name"]
    for child in node.get("Plans", []):
        yield from _index_names(child)


def _scans(node: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(node type, relation, index) of every scan in a plan tree (see _scans_with_conditions)."""
    for node_type, relation, index, _ in _scans_with_conditions(node):
        yield node_type, relation, index


def _scans_with_conditions(node: dict[str, Any]) -> Iterator[tuple[str, str, str | None, str]]:
    """(node type, relation, index, index condition or '') of every scan in a plan tree.

    A bitmap heap scan names the relation; its bitmap index scans below it
    name the index (one when the plan uses one index) and its recheck
    condition stands for theirs.
    """
    if "Relation Name" in node:
        if node["Node Type"] == "Bitmap Heap Scan":  # its index scans are below it
            index = ",".join(sorted(set(_index_names(node))))
            yield node["Node Type"], node["Relation Name"], index, node.get("Recheck Cond", "")
        else:
            index, condition = node.get("Index Name"), node.get("Index Cond", "")
            yield node["Node Type"], node["Relation Name"], index, condition
    for child in node.get("Plans", []):
        if node["Node Type"] != "Bitmap Heap Scan":
            yield from _scans_with_conditions(child)


def _index_conditions(node: dict[str, Any]) -> Iterator[str]:
    """The index conditions of every index scan in a plan tree."""
    if "Index Cond" in node:
        yield node["Index Cond"]
    for child in node.get("Plans", []):
        yield from _index_conditions(child)


def _assert_uses(
    plans: list[dict[str, Any]], index: str, what: str, *, also: tuple[str, ...] = ()
) -> None:
    """Every plan reads fifoq.executions through ``index`` (and only it, or ``also``)."""
    assert plans, f"{what}: statement not seen; if its function changed, update this guard"
    allowed = {index, *also}
    for plan in plans:
        scans = [s for s in _scans(plan["Plan"]) if s[1] == "executions" and s[0] != "ModifyTable"]
        text = _normal(plan["Query Text"])[:200]
        assert any(s[2] == index for s in scans), (
            f"{what} should read fifoq.executions through {index}, but its plan scans "
            f"{scans}: {text}"
        )
        assert all(s[2] in allowed for s in scans), (
            f"{what} reads fifoq.executions outside {sorted(allowed)}: {scans}: {text}"
        )


def _active_id(catcher: PlanCatcher, action: str) -> int:
    row = catcher.conn.execute(
        "SELECT id FROM fifoq.execution_details WHERE action = %s AND status = 'active' "
        "ORDER BY seq LIMIT 1",
        (action,),
    ).fetchone()
    assert row is not None
    return int(row[0])


# plpgsql switches to a generic plan after five executions: run six, so both
# the custom and the generic plans are checked.
ROUNDS = 6


def test_admission_uses_the_queue_head_index(setup: tuple[PlanCatcher, int]) -> None:
    catcher, _ = setup
    plans: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        victim = _active_id(catcher, "perf.1")
        plans += catcher.run("SELECT fifoq.complete(%(id)s, NULL, NULL)", {"id": victim})
    _assert_uses(
        _select(plans, "status = 'queued'", "FOR UPDATE SKIP LOCKED"),
        "executions_queue_head",
        "the queue-head query of fifoq.admit",
    )
    _assert_uses(
        _select(plans, "array_agg(g.seq ORDER BY g.seq)", "status = 'queued'"),
        "executions_queue_head",
        "the gap check of fifoq.admit",
    )
    _assert_uses(
        _select(plans, "UPDATE fifoq.executions e", "WHERE e.id = ANY (v_take)"),
        "executions_pkey",
        "the update that starts the admitted executions",
    )
    _assert_uses(
        _select(plans, "SELECT queue_id", "WHERE id = p_id"),
        "executions_pkey",
        "the execution lookup by id of fifoq.complete",
    )


def test_maintain_sweep_reads_only_recently_ended_executors(
    setup: tuple[PlanCatcher, int],
) -> None:
    """Step 2b of fifoq.maintain finds executors ended in the last ten minutes by a range.

    The executors marked with leftovers come from their partial index.

    Bounded by clock_timestamp() (volatile), "ended in the last ten
    minutes" was no index condition: every executor that ever ended was
    read, through executors_ended or executors_pkey, on every pass.
    """
    catcher, _ = setup
    catcher.conn.execute(
        "SELECT count(fifoq.unregister_executor(fifoq.register_executor('gone', 'h', 0, 5)))"
        " FROM generate_series(1, 200)"
    )
    catcher.conn.execute(
        "UPDATE fifoq.executors SET ended_at = ended_at - interval '1 day' WHERE name = 'gone'"
    )
    catcher.conn.execute("ANALYZE fifoq.executors")
    plans: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        plans += catcher.run("SELECT fifoq.maintain()")
    sweep = _select(plans, "x.ended_at >", "e.owner = x.id")
    assert sweep, "maintain's sweep (step 2b) was not seen; if its body changed, update this guard"
    for plan in sweep:
        executors = [s for s in _scans_with_conditions(plan["Plan"]) if s[1] == "executors"]
        assert any(s[2] == "executors_ended" and "ended_at >" in s[3] for s in executors), (
            f"maintain's sweep reads every ended executor: {executors}: "
            f"{_normal(plan['Query Text'])[:160]}"
        )
        # and the executors marked with leftovers (sql/0026) by their partial index
        assert any(s[2] == "executors_leftovers" for s in executors), (
            f"maintain's sweep reads executors for the leftovers mark: {executors}"
        )


def test_maintain_admission_pass_reads_only_queues_with_waiters(dsn: str) -> None:
    """Step 3 of fifoq.maintain looks at the queues with waiters, not at every queue.

    It walked all of fifoq.queues (queues_pkey, filtered on queued_count):
    24 ms per pass with 100,000 queues, nearly all idle. It now finds the
    queues with waiters in executions_queue_head and reads each by id.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT fifoq.set_policy('idle.a', 1, 100000)")
        conn.execute(
            "SELECT count(fifoq.ensure_queue('idle.a', 'g' || n)) FROM generate_series(1, 2000) n"
        )
        conn.execute(
            "SELECT count(fifoq.enqueue('idle.a', NULL, 'g' || n))"
            " FROM generate_series(1, 3) n, generate_series(1, 2)"
        )
        conn.execute("ANALYZE fifoq.queues")
        catcher = _catching(conn)
        plans: list[dict[str, Any]] = []
        for _ in range(ROUNDS):
            plans += catcher.run("SELECT fifoq.maintain()")
    step3 = _select(plans, "q.active_count < coalesce(")
    assert step3, (
        "maintain's admission pass (step 3) was not seen; if its body changed, update this guard"
    )
    for plan in step3:
        queues = [s for s in _scans_with_conditions(plan["Plan"]) if s[1] == "queues"]
        assert queues and all(s[3] for s in queues), (
            f"maintain's admission pass reads every queue: {queues}: "
            f"{_normal(plan['Query Text'])[:160]}"
        )
        executions = [s for s in _scans_with_conditions(plan["Plan"]) if s[1] == "executions"]
        assert executions and all(s[2] == "executions_queue_head" for s in executions), executions


def test_purge_with_nothing_old_enough_reads_no_history(setup: tuple[PlanCatcher, int]) -> None:
    """A purge that finds little or nothing to delete does not read the history.

    It read and sorted every finished execution (a sequential scan: 470 ms
    with 5M rows) to find none. Rows enqueued before the cutoff are found
    through executions_enqueued_brin now, and none are in this history.
    """
    catcher, _ = setup
    catcher.conn.execute("SELECT brin_summarize_new_values('fifoq.executions_enqueued_brin')")
    plans: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        plans += catcher.run("SELECT fifoq.purge(interval '30 days', 1000)")
    doomed = _select(plans, "WITH doomed AS", "FOR UPDATE SKIP LOCKED")
    assert doomed, "purge's delete was not seen; if its body changed, update this guard"
    for plan in doomed:
        scans = [
            s
            for s in _scans_with_conditions(plan["Plan"])
            if s[1] == "executions" and s[0] != "ModifyTable"
        ]
        assert any(s[2] == "executions_enqueued_brin" for s in scans), (
            f"purge does not read the history through executions_enqueued_brin: {scans}"
        )
        # Besides, only look-ups by key (the delete finds the chosen rows by id).
        wide = [s for s in scans if s[2] != "executions_enqueued_brin" and not s[3]]
        assert not wide, f"purge reads all of the history: {wide}"


def test_deadline_scan_uses_the_deadline_index(setup: tuple[PlanCatcher, int]) -> None:
    catcher, _ = setup
    plans: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        plans += catcher.run("SELECT fifoq.maintain()")
    scan = _select(plans, "e.deadline <=", "SELECT DISTINCT")
    _assert_uses(scan, "executions_deadline", "the queue-timeout scan of fifoq.maintain")
    # Through the index is not enough: compared with clock_timestamp()
    # (volatile) the deadline was a filter over every waiting row, read
    # through executions_deadline from end to end.
    for plan in scan:
        conditions = list(_index_conditions(plan["Plan"]))
        assert any("deadline <=" in c for c in conditions), (
            f"the queue-timeout scan reads every waiting row: no deadline range in its index "
            f"conditions {conditions}: {_normal(plan['Query Text'])[:160]}"
        )


def test_claim_uses_the_unclaimed_index(setup: tuple[PlanCatcher, int]) -> None:
    catcher, executor = setup
    plans: list[dict[str, Any]] = []
    for actions in (None, ["perf.bare"], None, ["perf.bare"], ["perf.bare"]):
        # five admitted ones to claim
        plans += catcher.run(
            "SELECT * FROM fifoq.claim(%(executor)s, %(actions)s, 1)",
            {"executor": executor, "actions": actions},
        )
    _assert_uses(
        _select(plans, "SELECT DISTINCT e.queue_id", "e.owner IS NULL"),
        "executions_unclaimed",
        "the scan for admitted, unowned executions of fifoq.claim (any action)",
    )
    _assert_uses(
        _select(plans, "FROM fifoq.queues q", "CROSS JOIN LATERAL", "e.owner IS NULL"),
        "executions_unclaimed",
        "the scan for admitted, unowned executions of fifoq.claim (given actions)",
    )
    _assert_uses(
        _select(plans, "SELECT u.id FROM fifoq.executions u"),
        "executions_unclaimed",
        "the per-queue pick of fifoq.claim",
        also=("executions_pkey",),  # the UPDATE finds the picked rows by id
    )


def test_claim_of_given_actions_reads_only_their_queues(
    setup: tuple[PlanCatcher, int],
) -> None:
    """With actions given, claim starts from their queues, whatever plan the cache holds.

    As one statement for both cases ("p_actions IS NULL OR q.action = ANY
    (p_actions)"), the generic plan that plpgsql may cache read every
    unclaimed execution of every action (all of executions_unclaimed, no
    condition) to keep those of the given actions. Generic plans are forced
    here, so the guard does not depend on when the cache switches to them.
    """
    catcher, executor = setup
    # Unclaimed executions of twenty other actions: the rows not to read.
    catcher.conn.execute(
        "SELECT count(fifoq.set_policy('other.' || a, 50, 100000)) FROM generate_series(1, 20) a"
    )
    catcher.conn.execute(
        "SELECT count(*) FROM generate_series(1, 20) a,"
        " fifoq.enqueue_many('other.' || a, array_fill(NULL::jsonb, ARRAY[50])) x"
    )
    catcher.conn.execute("ANALYZE fifoq.executions")
    catcher.conn.execute("SET plan_cache_mode = force_generic_plan")
    plans: list[dict[str, Any]] = []
    for _ in range(ROUNDS - 1):  # five admitted ones of perf.bare to claim
        plans += catcher.run(
            "SELECT * FROM fifoq.claim(%(executor)s, ARRAY['perf.bare'], 1)",
            {"executor": executor},
        )
    found = [
        (plan, scan)
        for plan in plans
        if "e.owner IS NULL" in _normal(plan["Query Text"])
        and "SELECT u.id" not in plan["Query Text"]
        for scan in _scans_with_conditions(plan["Plan"])
        if scan[1] in ("executions", "queues")
    ]
    assert found, "claim's search for queues with unclaimed executions was not seen"
    wide = [
        (scan, _normal(plan["Query Text"])[:160])
        for plan, scan in found
        if not scan[3]  # a scan with no index condition reads the whole index
    ]
    assert not wide, f"claim(actions) reads all of an index instead of the actions' queues: {wide}"


def _explain(catcher: PlanCatcher, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    row = catcher.conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    plan: dict[str, Any] = row[0][0]
    plan["Query Text"] = sql
    return plan


def test_lookup_by_id_uses_the_primary_key(setup: tuple[PlanCatcher, int]) -> None:
    catcher, _ = setup
    _assert_uses(
        [_explain(catcher, query("get"), {"id": _active_id(catcher, "perf.2")})],
        "executions_pkey",
        "QueueManager.get",
    )


def test_stats_read_the_queue_head_not_the_history(setup: tuple[PlanCatcher, int]) -> None:
    catcher, _ = setup
    # The live stats view and the query the materialized view refreshes from:
    # one index probe per queue for its oldest waiter, never the history.
    _assert_uses(
        [_explain(catcher, query("stats_live_all"), {})],
        "executions_queue_head",
        "the live stats (fifoq.queue_stats_live)",
    )
    for call in ("SELECT fifoq.refresh_stats()", "SELECT fifoq.refresh_stats(true)"):
        plans = catcher.run(call)  # CONCURRENTLY, and the API's rebuild
        refresh = [p for p in plans if any(s[1] == "executions" for s in _scans(p["Plan"]))]
        _assert_uses(refresh, "executions_queue_head", f"the refresh of fifoq.queue_stats ({call})")


def _queue_reads(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if node.get("Relation Name") == "queues":
        yield node
    for child in node.get("Plans", []):
        yield from _queue_reads(child)


@pytest.mark.parametrize("group", [None, ""])
def test_one_actions_stats_read_only_its_queues(
    setup: tuple[PlanCatcher, int], group: str | None
) -> None:
    catcher, _ = setup
    # fifoq stats ACTION / live_stats(action): the action's filter reaches the
    # scan of fifoq.queues through the view, instead of every queue being read
    # and the action picked afterwards.
    plan = _explain(catcher, query("stats_live_action"), {"action": "perf.2", "group": group})
    reads = list(_queue_reads(plan["Plan"]))
    assert reads, plan
    for read in reads:
        condition = read.get("Index Cond", "") + read.get("Filter", "")
        assert "action" in condition, f"fifoq.queues read without the action's filter: {read}"
    _assert_uses([plan], "executions_queue_head", "the live stats of one action")


@pytest.mark.parametrize("action", ["perf.2", "perf.bare"])
def test_the_listing_reads_the_live_indexes_not_the_history(
    setup: tuple[PlanCatcher, int], action: str
) -> None:
    catcher, _ = setup
    # QueueManager.list_executions (fifoq list): active rows from the two
    # partial indexes that hold every one (perf.2's are owned, perf.bare's
    # are not), the waiting line from the queue head index.
    for group in (None, ""):
        _assert_uses(
            [
                _explain(
                    catcher,
                    query("list_executions"),
                    {"action": action, "group": group, "limit": 100},
                )
            ],
            "executions_queue_head",
            "QueueManager.list_executions",
            also=("executions_owned", "executions_unclaimed"),
        )


def _executions_scans(plans: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """(node type, index, statement) of every read of fifoq.executions in the plans."""
    return [
        (node_type, index, _normal(plan["Query Text"])[:160])
        for plan in plans
        for node_type, relation, index in _scans(plan["Plan"])
        if relation == "executions" and node_type != "ModifyTable"
    ]


def test_complete_many_reads_executions_by_key_only(setup: tuple[PlanCatcher, int]) -> None:
    """Every statement of a completion batch finds its rows by id or by queue head.

    None may scan the history (a join of the batch's ids with the table was
    once planned that way).
    """
    catcher, _ = setup
    plans: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        ids = [_active_id(catcher, action) for action in ("perf.3", "perf.4")]
        plans += catcher.run(
            "SELECT * FROM fifoq.complete_many(%(ids)s::bigint[], %(results)s::jsonb[],"
            " %(errors)s::text[])",
            {"ids": ids, "results": ['{"ok": true}', None], "errors": [None, "failed"]},
        )
    scans = _executions_scans(plans)
    assert any(index == "executions_pkey" for _, index, _ in scans), (
        f"complete_many: no lookup by id seen; if its body changed, update this guard: {scans}"
    )
    allowed = {"executions_pkey", "executions_queue_head"}
    outside = [s for s in scans if s[1] not in allowed]
    assert not outside, f"complete_many reads fifoq.executions outside {sorted(allowed)}: {outside}"


def test_enqueue_many_reads_no_executions(setup: tuple[PlanCatcher, int]) -> None:
    """A batch of enqueues only inserts: it never reads the queue's history back."""
    catcher, _ = setup
    plans: list[dict[str, Any]] = []
    for n in range(ROUNDS):
        plans += catcher.run(
            "SELECT * FROM fifoq.enqueue_many(%(action)s, %(payloads)s::jsonb[])",
            {"action": "perf.5", "payloads": [f'{{"n": {n}, "i": {i}}}' for i in range(3)]},
        )
    assert any("INSERT INTO fifoq.executions" in _normal(p["Query Text"]) for p in plans), (
        "enqueue_many: its insert was not seen; if its body changed, update this guard"
    )
    scans = _executions_scans(plans)
    assert not scans, f"enqueue_many reads fifoq.executions: {scans}"


def test_plans_cached_while_the_table_was_small_still_use_indexes(dsn: str) -> None:
    """A session's cached plans do not keep reading the whole table as it grows.

    plpgsql caches generic plans per session, made with the table's size at
    the time. Planned on a young table, a look-up of a batch of ids is
    cheapest as a sequential scan; that plan must not survive into a table
    with history (autovacuum, whose statistics would replan, is off here so
    the cached plans stay).
    """
    with psycopg.connect(dsn, autocommit=True) as setup_conn:
        setup_conn.execute("ALTER TABLE fifoq.executions SET (autovacuum_enabled = off)")
        setup_conn.execute("SELECT fifoq.set_policy('young.a', 2, 100000)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        catcher = _catching(conn)

        def cycle() -> list[dict[str, Any]]:
            conn.execute(
                "SELECT count(*) FROM fifoq.enqueue_many('young.a', ARRAY['{}', '{}']::jsonb[])"
            )
            plans: list[dict[str, Any]] = []
            for _ in range(2):
                active = conn.execute(
                    "SELECT id FROM fifoq.executions WHERE status = 'active' ORDER BY id LIMIT 2"
                ).fetchall()
                plans += catcher.run(
                    "SELECT * FROM fifoq.complete_many(%(ids)s::bigint[], '{NULL,NULL}',"
                    " '{NULL,NULL}')",
                    {"ids": [row[0] for row in active]},
                )
            return plans

        for _ in range(ROUNDS + 2):  # generic plans are cached after five runs
            cycle()
        # History arrives; inserts do not invalidate cached plans.
        conn.execute(
            "INSERT INTO fifoq.executions (queue_id, seq, status, finished_at)"
            " SELECT q.id, -s.n, 'succeeded', now() FROM fifoq.queues q,"
            " generate_series(1, 20000) AS s(n)"
        )
        scans = [s for s in _executions_scans(cycle()) if s[1] is None]
    assert not scans, f"cached plans read all of fifoq.executions: {scans}"


def _policy_scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every scan node of fifoq.policies in a plan tree (EXPLAIN ANALYZE)."""
    if node.get("Relation Name") == "policies":
        yield node
    for child in node.get("Plans", []):
        yield from _policy_scans(child)


def test_stats_find_the_limits_without_a_policy_scan_per_queue(
    setup: tuple[PlanCatcher, int],
) -> None:
    """The live stats look each queue's policy up by join or by key, never by scanning per queue.

    A per-queue LATERAL lookup was planned as a scan of fifoq.policies for
    every queue: 3.4 ms for 100 queues, most of the view's time.
    """
    catcher, _ = setup
    row = catcher.conn.execute(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {query('stats_live_all')}", {}
    ).fetchone()
    assert row is not None
    scans = list(_policy_scans(row[0][0]["Plan"]))
    assert scans, "the live stats no longer read fifoq.policies; if so, update this guard"
    repeated = [
        (s["Node Type"], s.get("Index Name"), s["Actual Loops"])
        for s in scans
        if s["Actual Loops"] > 1 and s["Node Type"] not in ("Index Scan", "Index Only Scan")
    ]
    assert not repeated, f"fifoq.policies is scanned once per queue: {repeated}"


def _buffers(plan: dict[str, Any]) -> int:
    """Buffers a statement read (EXPLAIN ANALYZE with BUFFERS)."""
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def _head_index_buffers(node: dict[str, Any]) -> int:
    """Buffers read by the plan's scans of executions_queue_head (each scan node's own)."""
    own = _buffers(node) if node.get("Index Name") == "executions_queue_head" else 0
    return own + sum(_head_index_buffers(child) for child in node.get("Plans", []))


def _line_scan_buffers(catcher: PlanCatcher, action: str) -> dict[str, int]:
    """Buffers read by each scan of the line: admission's head query and gap check
    (of the admission one completion triggers) and the live stats' oldest waiter.

    Of the live stats only the scan of executions_queue_head counts: the rest
    of its plan reads the queue's row, whose HOT chain after hundreds of
    counter updates (vacuum is off) varies with when pages were pruned (seen
    9 → 16 buffers on a loaded machine).
    """
    row = catcher.conn.execute(
        "SELECT array_agg(id) FROM fifoq.execution_details WHERE action = %s AND status = 'active'",
        (action,),
    ).fetchone()
    assert row is not None and row[0], f"no active execution of {action} to complete"
    plans = catcher.run(
        "SELECT count(*) FROM fifoq.complete(%(id)s, NULL, NULL)", {"id": row[0][0]}
    )
    found = {
        "head query": _select(plans, "status = 'queued'", "FOR UPDATE SKIP LOCKED"),
        "gap check": _select(plans, "array_agg(g.seq ORDER BY g.seq)", "status = 'queued'"),
    }
    for what, selected in found.items():
        assert len(selected) == 1, f"expected one {what}, saw {len(selected)}"
    stats = catcher.conn.execute(
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query('stats_live_action')}",
        {"action": action, "group": ""},
    ).fetchone()
    assert stats is not None
    return {
        **{what: _buffers(selected[0]["Plan"]) for what, selected in found.items()},
        "live stats": _head_index_buffers(stats[0][0]["Plan"]),
    }


def test_admission_reads_the_line_from_its_start_not_past_admissions(dsn: str) -> None:
    """Scans of a queue's line cost the same after thousands of admissions as before them.

    Every admitted execution leaves a dead entry at the head of
    executions_queue_head until vacuum (off here, as it is for long on a
    table with millions of rows, where its threshold is a fraction of
    them). Scanned from the queue's first seq, admission walked through all
    of them: 13 buffers at the start, 167 after 40,000 admissions. The
    head query, the gap check and the live stats' oldest waiter each start
    at the queue's admitted_seq now.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE fifoq.executions SET (autovacuum_enabled = off)")
        conn.execute("SELECT fifoq.set_policy('line.a', 10, 100000)")
        conn.execute(
            "SELECT count(*)"
            " FROM fifoq.enqueue_many('line.a', array_fill(NULL::jsonb, ARRAY[8000]))"
        )
        catcher = _catching(conn)
        for name, value in {
            "auto_explain.log_analyze": "on",
            "auto_explain.log_buffers": "on",
        }.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        before = _line_scan_buffers(catcher, "line.a")

        # 6,000 admissions, ten per statement, with no plans reported.
        conn.execute("SELECT set_config('auto_explain.log_min_duration', '-1', false)")
        for _ in range(600):
            conn.execute(
                "SELECT count(*) FROM fifoq.complete_many("
                " (SELECT array_agg(id) FROM fifoq.execution_details"
                "  WHERE action = 'line.a' AND status = 'active'),"
                " array_fill(NULL::jsonb, ARRAY[10]), array_fill(NULL::text, ARRAY[10]))"
            )
        conn.execute("SELECT set_config('auto_explain.log_min_duration', '0', false)")
        after = _line_scan_buffers(catcher, "line.a")
    print(f"\nline scans: before {before}, after {after}")
    grown = {what: (before[what], after[what]) for what in before if after[what] > before[what] + 2}
    assert not grown, (
        f"buffers read before and after 6,000 admissions: {grown}; these scans walk past the "
        "admitted executions' index entries"
    )


# The functions 0011 runs with enable_seqscan off (fifoq.purge reads history
# in bulk and keeps the default).
INDEX_ONLY_FUNCTIONS = (
    "enqueue",
    "enqueue_many",
    "complete",
    "complete_many",
    "admit_to",
    "lock_execution",
    "cancel",
    "time_out",
    "watch",
    "claim",
    "heartbeat",
    "abandon_owned",
    "maintain",
)


def test_hot_functions_keep_enable_seqscan_off(dsn: str) -> None:
    """Each hot function still carries 0011's setting after the migrations that followed.

    CREATE OR REPLACE FUNCTION drops a function's SET clauses unless it
    restates them: 0012 once did so for fifoq.admit_to.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.proname, coalesce(p.proconfig, '{}') FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'fifoq' AND p.proname = ANY (%s)",
            (list(INDEX_ONLY_FUNCTIONS),),
        ).fetchall()
    settings = {name: config for name, config in rows}
    assert sorted(settings) == sorted(INDEX_ONLY_FUNCTIONS)
    missing = sorted(
        name for name, config in settings.items() if "enable_seqscan=off" not in config
    )
    assert not missing, f"these functions lost SET enable_seqscan = off: {missing}"
