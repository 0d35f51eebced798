"""QueueManager.list_executions: an action's active executions, then its line in start order."""

from __future__ import annotations

import pytest

from fifoq import InvalidInput, QueueManager, Status


async def test_the_listing_shows_each_groups_active_then_its_line_in_start_order(
    qm: QueueManager,
) -> None:
    await qm.set_policy("list.deploy", max_concurrent=2, group_by=("host",))
    # Interleaved enqueues: the listing orders by group, then active before
    # waiting, then seq, whatever the order the rows were made in.
    made = [await qm.enqueue("list.deploy", {"host": h, "n": n}) for n in range(4) for h in "ba"]
    owned = await qm.enqueue_and_wait("list.deploy", {"host": "c"})
    first_a = next(e for e in made if e.group == "a" and e.seq == 1)
    await qm.complete(first_a.id)  # finished: not listed; a's seq 3 is admitted

    listed = await qm.list_executions("list.deploy")

    assert [(e.group, e.seq, e.status) for e in listed] == [
        ("a", 2, Status.ACTIVE),
        ("a", 3, Status.ACTIVE),
        ("a", 4, Status.QUEUED),
        ("b", 1, Status.ACTIVE),
        ("b", 2, Status.ACTIVE),
        ("b", 3, Status.QUEUED),
        ("b", 4, Status.QUEUED),
        ("c", 1, Status.ACTIVE),
    ]
    assert listed[-1].id == owned.id and listed[-1].owner == qm.executor_id
    by_id = {e.id: e for e in made}
    for execution in listed[:-1]:
        assert execution.payload == by_id[execution.id].payload
        assert execution.owner is None


async def test_one_group_and_a_limit_cut_the_listing(qm: QueueManager) -> None:
    await qm.set_policy("list.cut", max_concurrent=1, group_by=("host",))
    await qm.enqueue_many("list.cut", [{"host": "a"}] * 3)
    await qm.enqueue_many("list.cut", [{"host": "b"}] * 4)

    only_b = await qm.list_executions("list.cut", group="b")
    assert [(e.group, e.seq, e.status) for e in only_b] == [
        ("b", 1, Status.ACTIVE),
        ("b", 2, Status.QUEUED),
        ("b", 3, Status.QUEUED),
        ("b", 4, Status.QUEUED),
    ]
    first_three = await qm.list_executions("list.cut", limit=3)
    assert [(e.group, e.seq) for e in first_three] == [("a", 1), ("a", 2), ("a", 3)]
    assert await qm.list_executions("list.cut", group="nobody") == []


async def test_the_default_group_is_listed_as_none_and_selected_with_an_empty_group(
    qm: QueueManager,
) -> None:
    await qm.set_policy("list.plain", max_concurrent=1)
    made = await qm.enqueue_many("list.plain", [None, None])
    await qm.enqueue("list.plain", group="special")

    everything = await qm.list_executions("list.plain")
    assert [(e.group, e.id) for e in everything[:2]] == [(None, made[0].id), (None, made[1].id)]
    assert [e.group for e in everything] == [None, None, "special"]
    default_only = await qm.list_executions("list.plain", group="")
    assert [e.id for e in default_only] == [made[0].id, made[1].id]


async def test_executions_that_left_the_line_are_not_listed(qm: QueueManager) -> None:
    await qm.set_policy("list.gone", max_concurrent=1)
    running, waiting, behind = await qm.enqueue_many("list.gone", [1, 2, 3])
    assert await qm.cancel(waiting.id)
    assert [e.id for e in await qm.list_executions("list.gone")] == [running.id, behind.id]
    await qm.complete(running.id)
    listed = await qm.list_executions("list.gone")
    assert [(e.id, e.status) for e in listed] == [(behind.id, Status.ACTIVE)]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"limit": 0}, "limit must be an integer from 1 to 10000, got 0"),
        ({"limit": 10_001}, "got 10001"),
        ({"limit": True}, "got True"),
        ({"limit": "5"}, "got '5'"),
        ({"group": "a\x00b"}, "invalid group name"),
    ],
)
async def test_bad_listing_arguments_are_refused_by_name(
    qm: QueueManager, kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(InvalidInput, match=needle):
        await qm.list_executions("list.bad", **kwargs)  # type: ignore[arg-type]


async def test_a_bad_action_name_is_refused(qm: QueueManager) -> None:
    with pytest.raises(InvalidInput, match="invalid action name"):
        await qm.list_executions("bad\nname")
