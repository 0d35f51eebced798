"""Policies: lookup order, groups, on_limit="reject" and limit changes."""

from __future__ import annotations

import psycopg
import pytest
from helpers import assert_fifo_and_limit, counts, fetch_rows

from fifoq import Policy, PolicyRejected, QueueManager, Status


async def test_lookup_goes_action_then_pack_then_default_then_unlimited(qm: QueueManager) -> None:
    assert await qm.get_policy("deploy.web") == Policy.unlimited()
    assert (await qm.get_policy("deploy.web")).max_concurrent is None

    await qm.set_default_policy(max_concurrent=7)
    policy = await qm.get_policy("deploy.web")
    assert (policy.action, policy.max_concurrent) == ("*", 7)

    await qm.set_policy("deploy.*", max_concurrent=3)
    policy = await qm.get_policy("deploy.web")
    assert (policy.action, policy.max_concurrent) == ("deploy.*", 3)
    # Another pack still gets the default, and so does a name without a dot:
    # it has no pack ("deploy.*" is deploy.<something>).
    assert (await qm.get_policy("backup.db")).action == "*"
    assert (await qm.get_policy("deploy")).action == "*"

    await qm.set_policy("deploy.web", max_concurrent=2, queue_timeout=None)
    policy = await qm.get_policy("deploy.web")
    assert policy == Policy("deploy.web", 2, 10_000, None, "enqueue", ())
    assert (await qm.get_policy("deploy.db")).action == "deploy.*"
    assert [p.action for p in await qm.list_policies()] == ["*", "deploy.*", "deploy.web"]


async def test_a_name_without_a_dot_is_governed_by_the_default_not_a_pack(
    qm: QueueManager, dsn: str
) -> None:
    # Each of the four places that resolve the policy in force is checked:
    # enqueue (fifoq.policy_for), admission after a completion (admit_to),
    # the live stats view, and maintain's repair pass.
    await qm.set_default_policy(max_concurrent=2)
    await qm.set_policy("dotless.*", max_concurrent=1)
    first, second, third = [await qm.enqueue("dotless") for _ in range(3)]
    assert [first.status, second.status, third.status] == [
        Status.ACTIVE,
        Status.ACTIVE,
        Status.QUEUED,
    ]
    assert (await qm.stats("dotless")).max_concurrent == 2
    await qm.complete(first.id)
    assert (await qm.get(third.id)).status is Status.ACTIVE  # admitted at limit 2, not 1
    # maintain: a default raised behind set_policy's back (a plain UPDATE, so
    # nothing admits at once) lets the repair pass admit the waiter.
    fourth = await qm.enqueue("dotless")
    assert fourth.status is Status.QUEUED
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("UPDATE fifoq.policies SET max_concurrent = 3 WHERE action = '*'")
        await conn.execute("SELECT fifoq.maintain()")
    assert (await qm.get(fourth.id)).status is Status.ACTIVE


async def test_limits_follow_the_policy_in_force(qm: QueueManager) -> None:
    async def statuses(action: str, n: int) -> list[Status]:
        return [(await qm.enqueue(action)).status for _ in range(n)]

    assert await statuses("free.run", 20) == [Status.ACTIVE] * 20  # unlimited
    await qm.set_default_policy(max_concurrent=1)
    await qm.set_policy("pack.*", max_concurrent=3)
    await qm.set_policy("pack.own", max_concurrent=2)
    assert await statuses("other.run", 2) == [Status.ACTIVE, Status.QUEUED]
    assert await statuses("pack.any", 4) == [Status.ACTIVE] * 3 + [Status.QUEUED]
    assert await statuses("pack.own", 3) == [Status.ACTIVE] * 2 + [Status.QUEUED]


async def test_group_by_applies_the_limit_per_group(qm: QueueManager, dsn: str) -> None:
    await qm.set_policy("g.deploy", max_concurrent=1, group_by=("host",))
    a1 = await qm.enqueue("g.deploy", {"host": "a"})
    b1 = await qm.enqueue("g.deploy", {"host": "b"})
    a2 = await qm.enqueue("g.deploy", {"host": "a"})
    none1 = await qm.enqueue("g.deploy", {"other": 1})  # missing key: the default group
    none2 = await qm.enqueue("g.deploy", None)
    assert [(e.group, e.status) for e in (a1, b1, a2, none1, none2)] == [
        ("a", Status.ACTIVE),
        ("b", Status.ACTIVE),
        ("a", Status.QUEUED),
        (None, Status.ACTIVE),
        (None, Status.QUEUED),
    ]
    stats_a = await qm.stats("g.deploy", group="a")
    assert (stats_a.group, stats_a.active_count, stats_a.queue_length) == ("a", 1, 1)
    stats_b = await qm.stats("g.deploy", group="b")
    assert (stats_b.active_count, stats_b.queue_length) == (1, 0)

    # Completing in group b admits nothing in group a; completing a1 admits a2.
    await qm.complete(b1.id)
    assert (await qm.get(a2.id)).status is Status.QUEUED
    await qm.complete(a1.id)
    assert (await qm.get(a2.id)).status is Status.ACTIVE
    assert_fifo_and_limit(await fetch_rows(dsn, "g.deploy"), 1)


async def test_group_by_several_keys_and_an_explicit_group(qm: QueueManager) -> None:
    await qm.set_policy("g.multi", max_concurrent=1, group_by=("region", "host"))
    first = await qm.enqueue("g.multi", {"host": "h1", "region": "eu"})
    assert first.group == "eu,h1"
    assert (await qm.enqueue("g.multi", {"region": "eu", "host": "h1"})).status is Status.QUEUED
    # An explicit group wins over group_by.
    explicit = await qm.enqueue("g.multi", {"host": "h1", "region": "eu"}, group="manual")
    assert (explicit.group, explicit.status) == ("manual", Status.ACTIVE)


async def test_explicit_groups_without_group_by_are_separate_queues(qm: QueueManager) -> None:
    await qm.set_policy("g.plain", max_concurrent=1)
    x1 = await qm.enqueue("g.plain", group="x")
    y1 = await qm.enqueue("g.plain", group="y")
    x2 = await qm.enqueue("g.plain", group="x")
    default = await qm.enqueue("g.plain")
    assert [e.status for e in (x1, y1, x2, default)] == [
        Status.ACTIVE,
        Status.ACTIVE,
        Status.QUEUED,
        Status.ACTIVE,
    ]
    assert (x1.seq, y1.seq, x2.seq, default.seq) == (1, 1, 2, 1)  # seq is per queue
    groups = {s.group for s in await qm.live_stats()}
    assert groups == {"x", "y", None}


async def test_reject_refuses_what_cannot_start_at_once_and_stores_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("r.now", max_concurrent=2, on_limit="reject")
    first = await qm.enqueue("r.now")
    second = await qm.enqueue("r.now")
    assert (first.status, second.status) == (Status.ACTIVE, Status.ACTIVE)
    before = await counts(dsn)
    with pytest.raises(PolicyRejected) as info:
        await qm.enqueue("r.now", {"x": 1})
    assert str(info.value) == (
        "action 'r.now' is at its limit: 2 of 2 active, 0 waiting (on_limit=reject)"
    )
    with pytest.raises(PolicyRejected):
        await qm.enqueue_and_wait("r.now")
    assert await counts(dsn) == before
    await qm.complete(first.id)
    assert (await qm.enqueue("r.now")).status is Status.ACTIVE


async def test_reject_is_per_group(qm: QueueManager) -> None:
    await qm.set_policy("r.grouped", max_concurrent=1, on_limit="reject", group_by=("host",))
    await qm.enqueue("r.grouped", {"host": "a"})
    assert (await qm.enqueue("r.grouped", {"host": "b"})).status is Status.ACTIVE
    with pytest.raises(PolicyRejected, match=r"group 'a'"):
        await qm.enqueue("r.grouped", {"host": "a"})


async def test_raising_the_limit_admits_waiters_at_once_and_lowering_admits_none(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("l.change", max_concurrent=1)
    executions = [await qm.enqueue("l.change") for _ in range(6)]
    await qm.set_policy("l.change", max_concurrent=3)
    assert [(await qm.get(e.id)).status for e in executions] == [Status.ACTIVE] * 3 + [
        Status.QUEUED
    ] * 3
    await qm.set_policy("l.change", max_concurrent=1)
    await qm.complete(executions[0].id)
    await qm.complete(executions[1].id)
    # Two left the three slots, but the limit is now 1 and one is still active.
    assert (await qm.get(executions[3].id)).status is Status.QUEUED
    await qm.complete(executions[2].id)
    assert (await qm.get(executions[3].id)).status is Status.ACTIVE
    stats = await qm.stats("l.change")
    assert (stats.active_count, stats.queue_length, stats.max_concurrent) == (1, 2, 1)


async def test_deleting_a_policy_hands_its_queues_to_the_next_and_admits_at_once(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("d.*", max_concurrent=3)
    own = await qm.set_policy("d.job", max_concurrent=1, group_by=("host",))
    executions = [await qm.enqueue("d.job", {"host": "a"}) for _ in range(5)]
    assert [e.status for e in executions] == [Status.ACTIVE] + [Status.QUEUED] * 4

    assert await qm.delete_policy("d.job") == own
    assert await qm.get_policy("d.job") == await qm.get_policy("d.other")
    # The pack's limit of 3 holds from now on, and its free slots are filled
    # at once, in seq order, without waiting for a completion.
    assert [(await qm.get(e.id)).status for e in executions] == [Status.ACTIVE] * 3 + [
        Status.QUEUED
    ] * 2
    assert (await qm.stats("d.job", group="a")).max_concurrent == 3
    # The pack's grouping applies to newcomers (none: the default group).
    assert (await qm.enqueue("d.job", {"host": "a"})).group is None

    assert await qm.delete_policy("d.*") is not None
    # Unlimited now: the rest of host a's line starts at once.
    assert [(await qm.get(e.id)).status for e in executions] == [Status.ACTIVE] * 5
    assert_fifo_and_limit(await fetch_rows(dsn, "d.job"), None)
    assert await qm.list_policies() == []


async def test_deleting_a_policy_that_is_not_set_changes_nothing(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("n.*", max_concurrent=1)
    await qm.enqueue("n.job")
    before = await counts(dsn)
    assert await qm.delete_policy("n.job") is None
    assert await qm.delete_policy("*") is None
    assert await counts(dsn) == before
    assert [p.action for p in await qm.list_policies()] == ["n.*"]


async def test_deleting_the_default_policy_from_sql_returns_it_and_admits(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_default_policy(max_concurrent=1)
    first, second = [await qm.enqueue("sqldel.job") for _ in range(2)]
    assert second.status is Status.QUEUED
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT action, max_concurrent FROM fifoq.delete_policy('*')")
        assert await cur.fetchall() == [("*", 1)]
        cur = await conn.execute(
            "SELECT count(*) FROM fifoq.delete_policy('*') WHERE action IS NULL"
        )
        assert await cur.fetchone() == (1,)  # none left: a NULL row, nothing deleted
    assert (await qm.get(second.id)).status is Status.ACTIVE
    assert (await qm.get(first.id)).status is Status.ACTIVE
