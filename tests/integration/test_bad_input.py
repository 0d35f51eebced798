"""Every bad input of SPEC §3.7 raises the named error, in one line, and changes nothing."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from helpers import counts

from fifoq import (
    FifoqError,
    InvalidInput,
    InvalidPolicy,
    InvalidTransition,
    Outcome,
    QueueManager,
    Status,
    UnknownExecution,
    validation,
)

UNKNOWN_ID = 2**40


async def assert_refused(
    dsn: str,
    call: Callable[[], Awaitable[Any]],
    error: type[FifoqError],
    *names: str,
) -> str:
    """Run ``call``; it must raise ``error`` with a one-line message naming ``names``
    and leave every fifoq table as it was. Returns the message."""
    before = await counts(dsn)
    with pytest.raises(error) as info:
        await call()
    message = str(info.value)
    assert message, "empty error message"
    assert "\n" not in message, f"message spans lines: {message!r}"
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert await counts(dsn) == before, "the database changed"
    return message


@pytest.fixture
async def small(dsn: str) -> AsyncIterator[QueueManager]:
    """An executor with a 64-byte payload limit."""
    async with QueueManager.connect(dsn, max_payload_bytes=64) as manager:
        yield manager


# -- unknown executions and wrong transitions ---------------------------------


def every_call_taking_an_id(
    qm: QueueManager, execution_id: Any
) -> list[Callable[[], Awaitable[Any]]]:
    """Each API call that names an execution, as a thunk."""
    return [
        lambda: qm.get(execution_id),
        lambda: qm.complete(execution_id),
        lambda: qm.complete(execution_id, error="x"),
        lambda: qm.cancel(execution_id),
        lambda: qm.wait_started(execution_id),
        lambda: qm.complete_many([Outcome(execution_id)]),
    ]


async def test_unknown_execution_is_refused_by_every_call(qm: QueueManager, dsn: str) -> None:
    await qm.enqueue("bad.known")  # some state, to show it stays as it is
    for call in every_call_taking_an_id(qm, UNKNOWN_ID):
        message = await assert_refused(dsn, call, UnknownExecution, str(UNKNOWN_ID))
        assert message == f"unknown execution {UNKNOWN_ID}"


@pytest.mark.parametrize("execution_id", [2**63, -(2**63) - 1, 10**30])
async def test_ids_beyond_bigint_are_unknown_executions_in_every_call(
    qm: QueueManager, dsn: str, execution_id: int
) -> None:
    # Sent as they are, they reach the database as numeric and fail there as
    # a type error (no fifoq.cancel_deferred(numeric)), not as a FifoqError.
    for call in every_call_taking_an_id(qm, execution_id):
        message = await assert_refused(dsn, call, UnknownExecution, str(execution_id))
        assert message == f"unknown execution {execution_id}"


@pytest.mark.parametrize("execution_id", [None, "1", 1.0, True])
async def test_ids_that_are_not_integers_are_refused_by_every_call(
    qm: QueueManager, dsn: str, execution_id: Any
) -> None:
    for call in every_call_taking_an_id(qm, execution_id):
        await assert_refused(
            dsn, call, InvalidInput, "execution ids are integers", repr(execution_id)
        )


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan, -math.inf, "5", True])
async def test_bad_wait_timeouts_are_refused_before_anything_changes(
    qm: QueueManager, dsn: str, timeout: Any
) -> None:
    # A negative timeout would otherwise time the execution out at once:
    # bad input that changed the database.
    await qm.set_policy("bad.timeout", max_concurrent=1)
    await qm.enqueue("bad.timeout")
    waiting = await qm.enqueue("bad.timeout")
    await assert_refused(
        dsn, lambda: qm.wait_started(waiting.id, timeout=timeout), InvalidInput, "timeout"
    )
    await assert_refused(
        dsn, lambda: qm.enqueue_and_wait("bad.timeout", timeout=timeout), InvalidInput, "timeout"
    )
    assert (await qm.get(waiting.id)).status is Status.QUEUED


async def test_a_zero_or_infinite_wait_timeout_is_accepted(qm: QueueManager) -> None:
    await qm.set_policy("ok.timeout", max_concurrent=1)
    started = await qm.enqueue_and_wait("ok.timeout", timeout=math.inf)
    assert started.status is Status.ACTIVE
    assert (await qm.enqueue_and_wait("ok.timeout.free", timeout=0)).status is Status.ACTIVE


async def test_completing_twice_is_refused_and_frees_no_second_slot(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("bad.twice", max_concurrent=1)
    first, second, third = [await qm.enqueue("bad.twice") for _ in range(3)]
    done = await qm.complete(first.id, result={"ok": True})
    assert done.status is Status.SUCCEEDED
    assert (await qm.get(second.id)).status is Status.ACTIVE
    for call in (
        lambda: qm.complete(first.id),
        lambda: qm.complete(first.id, error="again"),
    ):
        message = await assert_refused(dsn, call, InvalidTransition, str(first.id), "succeeded")
        assert message == (
            f"cannot complete execution {first.id} of action 'bad.twice': it is succeeded, "
            "not active"
        )
    assert (await qm.get(third.id)).status is Status.QUEUED
    stats = await qm.stats("bad.twice")
    assert (stats.active_count, stats.queue_length, stats.total_completed) == (1, 1, 1)
    assert (await qm.get(first.id)).result == {"ok": True}


async def test_completing_a_queued_or_cancelled_execution_is_refused(
    qm: QueueManager, dsn: str
) -> None:
    await qm.set_policy("bad.queued", max_concurrent=1)
    await qm.enqueue("bad.queued")
    queued = await qm.enqueue("bad.queued")
    await assert_refused(dsn, lambda: qm.complete(queued.id), InvalidTransition, "queued")
    await qm.cancel(queued.id)
    await assert_refused(dsn, lambda: qm.complete(queued.id), InvalidTransition, "cancelled")


# -- policies -------------------------------------------------------------------

BAD_POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("max_concurrent", {"max_concurrent": 0}),
    ("max_concurrent", {"max_concurrent": -1}),
    ("max_concurrent", {"max_concurrent": 2**31}),
    ("max_concurrent", {"max_concurrent": True}),
    ("max_concurrent", {"max_concurrent": 1.5}),
    ("max_concurrent", {"max_concurrent": "3"}),
    ("max_concurrent", {"max_concurrent": None}),
    ("max_queue_length", {"max_queue_length": -1}),
    ("max_queue_length", {"max_queue_length": 2**31}),
    ("max_queue_length", {"max_queue_length": False}),
    ("queue_timeout", {"queue_timeout": math.nan}),
    ("queue_timeout", {"queue_timeout": math.inf}),
    ("queue_timeout", {"queue_timeout": -math.inf}),
    ("queue_timeout", {"queue_timeout": 0}),
    ("queue_timeout", {"queue_timeout": -1.0}),
    ("queue_timeout", {"queue_timeout": True}),
    ("queue_timeout", {"queue_timeout": "10"}),
    ("on_limit", {"on_limit": "drop"}),
    ("on_limit", {"on_limit": None}),
    ("group_by", {"group_by": "host"}),
    ("group_by", {"group_by": [""]}),
    ("group_by", {"group_by": ["a\x00b"]}),
    ("group_by", {"group_by": ["ok", 1]}),
    ("group_by", {"group_by": None}),
    ("group_by names key 'host' twice", {"group_by": ["host", "port", "host"]}),
]


@pytest.mark.parametrize(
    ("field", "bad"),
    BAD_POLICIES,
    ids=[f"{next(iter(v))}={next(iter(v.values()))!r}" for _, v in BAD_POLICIES],
)
async def test_invalid_policy_values_are_refused(
    qm: QueueManager, dsn: str, field: str, bad: dict[str, Any]
) -> None:
    await qm.set_policy("bad.policy", max_concurrent=4)  # must stay as it is
    values: dict[str, Any] = {"max_concurrent": 2, **bad}
    message = await assert_refused(
        dsn, lambda: qm.set_policy("bad.policy", **values), InvalidPolicy, field, "'bad.policy'"
    )
    assert message.startswith("invalid policy for action 'bad.policy': ")
    assert (await qm.get_policy("bad.policy")).max_concurrent == 4
    with pytest.raises(ValueError):  # InvalidPolicy is a ValueError too
        await qm.set_default_policy(**values)


@pytest.mark.parametrize("action", ["", "a" * 256, "bad\nname", "tab\there", "\x7f", 5])
async def test_invalid_policy_action_names_are_refused(
    qm: QueueManager, dsn: str, action: Any
) -> None:
    # A bad policy value, and a bad action name (SPEC: InvalidInput for bad
    # action names), as every other call taking a name says.
    for expected in (InvalidPolicy, InvalidInput):
        await assert_refused(
            dsn, lambda: qm.set_policy(action, max_concurrent=1), expected, "action name"
        )


async def test_the_database_refuses_invalid_policies_from_sql_callers(
    qm: QueueManager, dsn: str
) -> None:
    # The SQL function checks too: a trigger or another language gets the same rules.
    good: tuple[Any, ...] = ("x.y", 1, 10, 1.0, "enqueue", [])
    cases: list[tuple[int, Any, str]] = [  # (argument position, bad value, named field)
        (1, 0, "max_concurrent"),
        (2, -1, "max_queue_length"),
        (3, math.nan, "queue_timeout"),
        (3, math.inf, "queue_timeout"),
        (4, "drop", "on_limit"),
        (5, [""], "group_by"),
        (5, ["host", "port", "host"], "group_by names key 'host' twice"),
        (0, "x\ny", "action name"),
    ]
    before = await counts(dsn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for position, bad, field in cases:
            args = list(good)
            args[position] = bad
            with pytest.raises(psycopg.Error) as info:
                await conn.execute(
                    "SELECT fifoq.set_policy(%s, %s, %s, %s::float8, %s, %s::text[])", args
                )
            assert info.value.sqlstate == "FQ400"
            assert field in (info.value.diag.message_primary or "")
    assert await counts(dsn) == before


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("SELECT fifoq.enqueue(E'sq.bad\\n')", "'sq.bad\\n'"),
        ("SELECT fifoq.enqueue(E'sq.bad\\x1b[31mred')", "'sq.bad\\x1b[31mred'"),
        ("SELECT fifoq.enqueue('sq.ok', NULL, E'g\\ty')", "'g\\ty'"),
        ("SELECT fifoq.enqueue_many('sq.ok', '{1}', E'g\\u200by')", "'g\\u200by'"),
        ("SELECT fifoq.set_policy(E'sq.bad\\r', 1)", "'sq.bad\\r'"),
        ("SELECT fifoq.set_policy('sq.ok', 1, 10, 5, E'x\\ny')", "'x\\ny'"),
        ("SELECT fifoq.set_policy('sq.ok', 1, 10, 5, 'enqueue', ARRAY[E'k\\n'])", "'k\\n'"),
        ("SELECT fifoq.delete_policy(E'a\\tb')", "'a\\tb'"),
        ("INSERT INTO fifoq.queues (action) VALUES (E'sq.bad\\n')", "'sq.bad\\n'"),
    ],
)
async def test_sql_errors_show_refused_characters_escaped_on_one_line(
    dsn: str, statement: str, shown: str
) -> None:
    # They were quoted as they are (%L): a newline split the message, an
    # escape sequence reached the terminal (sql/0029). Now as Python shows them.
    before = await counts(dsn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            await conn.execute(statement)  # type: ignore[arg-type]
    message = info.value.diag.message_primary or ""
    assert shown in message, message
    assert message.isprintable(), repr(message)
    assert await counts(dsn) == before


# -- payloads, results and names ------------------------------------------------


class NotJson:
    """An object json cannot serialise."""


NON_JSON: list[Any] = [
    NotJson(),
    {1, 2},
    b"bytes",
    math.nan,
    {"deep": [math.inf]},
    {"key": NotJson()},
    {("tuple", "key"): 1},
]


@pytest.mark.parametrize("payload", NON_JSON, ids=lambda p: type(p).__name__)
async def test_non_json_payloads_are_refused(qm: QueueManager, dsn: str, payload: Any) -> None:
    for call in (
        lambda: qm.enqueue("bad.payload", payload),
        lambda: qm.enqueue_and_wait("bad.payload", payload),
    ):
        await assert_refused(dsn, call, InvalidInput, "payload")


async def test_payloads_with_nul_characters_are_refused(qm: QueueManager, dsn: str) -> None:
    await assert_refused(dsn, lambda: qm.enqueue("bad.nul", {"k": "a\x00b"}), InvalidInput, "NUL")
    await assert_refused(dsn, lambda: qm.enqueue("bad.nul", "\\\x00"), InvalidInput, "NUL")


async def test_the_text_backslash_u0000_is_no_nul_and_round_trips(qm: QueueManager) -> None:
    # A Windows path such as C:\u0000dir: its JSON holds "\\u0000", an
    # escaped backslash and then plain text, which PostgreSQL stores.
    path = "C:\\u0000dir"
    ex = await qm.enqueue_and_wait("ok.backslash", {"path": path, "odd": "\\\\u0000"})
    done = await qm.complete(ex.id, result=path)
    assert (await qm.get(ex.id)).payload == {"path": path, "odd": "\\\\u0000"}
    assert done.result == path


async def test_oversized_payloads_are_refused_at_the_configured_limit(
    small: QueueManager, dsn: str
) -> None:
    fits = {"k": "x" * 56}  # {"k":"..."} is exactly 64 bytes
    assert (await small.enqueue("bad.size", fits)).payload == fits
    too_big = {"k": "x" * 57}
    message = await assert_refused(
        dsn, lambda: small.enqueue("bad.size", too_big), InvalidInput, "payload", "65", "64"
    )
    assert message == (
        "payload for action 'bad.size' is 65 bytes of JSON, over the limit of 64 bytes"
    )
    # Multibyte characters count in bytes, not characters.
    await assert_refused(
        dsn, lambda: small.enqueue("bad.size", {"k": "é" * 30}), InvalidInput, "bytes"
    )


async def test_bad_results_are_refused_and_leave_the_execution_active(
    small: QueueManager, dsn: str
) -> None:
    execution = await small.enqueue("bad.result")
    for result in (NotJson(), {"big": "x" * 100}, math.nan):

        async def complete(result: Any = result) -> Any:
            return await small.complete(execution.id, result=result)

        await assert_refused(dsn, complete, InvalidInput, "result")
    not_text: Any = 42
    await assert_refused(
        dsn, lambda: small.complete(execution.id, error=not_text), InvalidInput, "error"
    )
    assert (await small.get(execution.id)).status is Status.ACTIVE


BAD_NAMES: list[Any] = [
    "",
    "a" * 256,
    "line\nbreak",
    "nul\x00",
    "bell\x07",
    "\x9b",
    "\u2028",
    "zero\u200bwidth",
    "no\u00a0break",
    7,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
async def test_bad_action_names_are_refused(qm: QueueManager, dsn: str, name: Any) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: qm.enqueue(name),
        lambda: qm.enqueue_and_wait(name),
        lambda: qm.stats(name),
        lambda: qm.get_policy(name),
        lambda: qm.delete_policy(name),
    ]
    for call in calls:
        await assert_refused(dsn, call, InvalidInput, "action name")


@pytest.mark.parametrize("name", BAD_NAMES[1:], ids=repr)  # "" means the default group
async def test_bad_group_names_are_refused(qm: QueueManager, dsn: str, name: Any) -> None:
    await assert_refused(dsn, lambda: qm.enqueue("bad.group", group=name), InvalidInput, "group")


async def test_longest_names_are_accepted(qm: QueueManager) -> None:
    action, group = "a" * 255, "g" * 255
    execution = await qm.enqueue(action, group=group)
    assert (execution.action, execution.group) == (action, group)


async def test_group_from_a_payload_value_with_control_characters_is_refused(
    qm: QueueManager, dsn: str
) -> None:
    # The group comes from group_by in the database, so the database checks it.
    await qm.set_policy("bad.derived", max_concurrent=1, group_by=("host",))
    message = await assert_refused(
        dsn,
        lambda: qm.enqueue("bad.derived", {"host": "evil\nhost"}),
        InvalidInput,
        "group name",
        "'bad.derived'",
    )
    assert "\n" not in message
    # A format character, named with its position as Python names a bad --group.
    await assert_refused(
        dsn,
        lambda: qm.enqueue("bad.derived", {"host": "zero\u200bwidth"}),
        InvalidInput,
        "group name",
        "U+200B at position 5",
    )


async def test_the_database_refuses_bad_names_from_sql_callers(dsn: str) -> None:
    before = await counts(dsn)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for action in ("", "x" * 256, "a\x01b", "zero\u200bwidth", "no\u00a0break", "\ue000"):
            with pytest.raises(psycopg.Error) as info:
                await conn.execute("SELECT fifoq.enqueue(%s)", (action,))
            assert info.value.sqlstate == "FQ422"
            # In the words Python uses: the length, or the character and where;
            # the name as Python writes it (sql/0029).
            problem = validation._name_problem(action)
            assert problem is not None
            assert info.value.diag.message_primary == f"invalid action name {action!r}: {problem}"
        with pytest.raises(psycopg.Error) as info:
            await conn.execute("SELECT fifoq.complete(%s)", (UNKNOWN_ID,))
        assert info.value.sqlstate == "FQ404"
    assert await counts(dsn) == before


async def test_names_with_letters_symbols_and_spaces_are_accepted(
    qm: QueueManager, dsn: str
) -> None:
    for action in ("déploy.prod", "ship.🚀", "with space.ok", "日本.タスク"):
        assert (await qm.enqueue(action, group="zone é 1")).action == action
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute("SELECT (fifoq.enqueue('sql.🚀 ok')).action")).fetchone()
    assert row == ("sql.🚀 ok",)


def test_python_and_sql_refuse_the_same_characters_in_names(dsn: str) -> None:
    """Every code point a PostgreSQL text can hold: the API and fifoq.valid_name agree.

    Otherwise a queue named from SQL could not be read through the API (or
    the API would send names the database then refuses with a constraint
    error instead of a clear message).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT array_agg(c ORDER BY c) FROM generate_series(1, 1114111) AS c"
            " WHERE (c < 55296 OR c > 57343) AND NOT fifoq.valid_name('x' || chr(c))"
        ).fetchone()
    assert row is not None
    sql_refused = set(row[0])
    python_refused = {
        c
        for c in range(1, 0x110000)
        if not 0xD800 <= c <= 0xDFFF and validation._name_problem("x" + chr(c)) is not None
    }
    assert sql_refused, "fifoq.valid_name refused nothing"
    only_sql = sorted(sql_refused - python_refused)[:10]
    only_python = sorted(python_refused - sql_refused)[:10]
    assert not only_sql and not only_python, (
        f"refused only by SQL: {[hex(c) for c in only_sql]}; "
        f"only by Python: {[hex(c) for c in only_python]}"
    )
