"""Input checks made in Python before anything reaches the database."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fifoq import InvalidInput, InvalidPolicy
from fifoq.validation import check_action, check_group, check_policy, to_json

GOOD_POLICY: dict[str, Any] = {
    "max_concurrent": 1,
    "max_queue_length": 10,
    "queue_timeout": 1.0,
    "on_limit": "enqueue",
    "group_by": (),
}


def one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name", ["a", "core.deploy", "a" * 255, "ünïcødé.név", "with space"])
def test_good_action_names_pass(name: str) -> None:
    assert check_action(name) == name
    assert check_group(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "1-255 characters, got 0"),
        ("a" * 256, "1-255 characters, got 256"),
        ("new\nline", "printable characters, but has U+000A at position 4"),
        ("nul\x00", "printable characters, but has U+0000 at position 4"),
        ("del\x7f", "printable characters, but has U+007F at position 4"),
        ("c1\x85", "printable characters, but has U+0085 at position 3"),
        ("zw\u200b", "printable characters, but has U+200B at position 3"),
        ("nb\u00a0sp", "printable characters, but has U+00A0 at position 3"),
        (None, "must be a string, got NoneType"),
        (b"bytes", "must be a string, got bytes"),
    ],
)
def test_bad_action_names_are_named_in_one_line(name: Any, problem: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_action(name)
    message = one_line(info)
    assert message.startswith(f"invalid action name {name!r}")
    assert problem in message


def test_empty_or_missing_group_is_the_default_group() -> None:
    assert check_group(None) is None
    assert check_group("") is None
    with pytest.raises(InvalidInput, match=r"^invalid group name 'a\\tb'"):
        check_group("a\tb")


def test_invalid_input_and_invalid_policy_are_value_errors() -> None:
    assert issubclass(InvalidInput, ValueError)
    assert issubclass(InvalidPolicy, ValueError)


def test_to_json_is_compact_and_keeps_unicode() -> None:
    assert to_json(None, what="payload", limit=10) is None
    assert to_json({"a": [1, "é"]}, what="payload", limit=100) == '{"a":[1,"é"]}'


def test_to_json_limit_counts_utf8_bytes() -> None:
    assert to_json("éé", what="payload", limit=6) == '"éé"'  # 6 bytes
    with pytest.raises(InvalidInput) as info:
        to_json("ééé", what="payload", limit=6)
    assert one_line(info) == "payload is 8 bytes of JSON, over the limit of 6 bytes"


@pytest.mark.parametrize(
    "value",
    [object(), {1}, math.nan, math.inf, {"k": b"x"}, {(1, 2): 3}],
    ids=["object", "set", "nan", "inf", "bytes", "tuple-key"],
)
def test_to_json_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        to_json(value, what="result", limit=1000)
    assert one_line(info).startswith("result is not JSON-serialisable")


def test_to_json_refuses_nul_characters_and_deep_nesting() -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        to_json({"k": "\x00"}, what="payload", limit=1000)
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInput) as info:
        to_json(deep, what="payload", limit=10**9)
    one_line(info)


def test_check_policy_returns_normalised_values() -> None:
    assert check_policy("a.b", **{**GOOD_POLICY, "group_by": ["h"], "queue_timeout": 3}) == (
        "a.b",
        1,
        10,
        3.0,
        "enqueue",
        ["h"],
    )
    assert check_policy("*", **{**GOOD_POLICY, "queue_timeout": None})[3] is None
    limits = check_policy(
        "x", **{**GOOD_POLICY, "max_concurrent": 2**31 - 1, "max_queue_length": 0}
    )
    assert limits[1:3] == (2**31 - 1, 0)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_concurrent", 0, "between 1 and 2147483647, got 0"),
        ("max_concurrent", 2**31, "between 1 and 2147483647"),
        ("max_concurrent", True, "must be an integer, got True"),
        ("max_concurrent", 2.0, "must be an integer"),
        ("max_queue_length", -1, "between 0 and 2147483647, got -1"),
        ("queue_timeout", math.nan, "positive number of seconds, got nan"),
        ("queue_timeout", -math.inf, "positive number"),
        ("queue_timeout", 0.0, "positive number"),
        ("queue_timeout", False, "number of seconds, got False"),
        ("on_limit", "wait", "'enqueue' or 'reject', got 'wait'"),
        ("group_by", "host", "sequence of payload keys, got 'host'"),
        ("group_by", ["a" * 256], "group_by key"),
        ("group_by", [None], "group_by key None"),
    ],
)
def test_check_policy_names_the_bad_field(field: str, value: Any, says: str) -> None:
    with pytest.raises(InvalidPolicy) as info:
        check_policy("p.q", **{**GOOD_POLICY, field: value})
    message = one_line(info)
    assert message.startswith("invalid policy for action 'p.q': ")
    assert field in message and says in message


def test_check_policy_names_a_bad_action() -> None:
    with pytest.raises(InvalidPolicy) as info:
        check_policy("x\ny", **GOOD_POLICY)
    assert "action name 'x\\ny'" in one_line(info)
