"""Checks of user input made before anything reaches the database.

The SQL functions check names and policies again, so SQL callers get the same
rules; these checks give Python callers clear messages and keep oversized or
non-JSON values off the wire.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from .errors import InvalidInput, InvalidPolicy, InvalidPolicyName, UnknownExecution

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_BATCH",
    "as_list",
    "check_action",
    "check_batch_size",
    "check_error_text",
    "check_execution_id",
    "check_group",
    "check_policy",
    "check_timeout",
    "to_json",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_NAME_LENGTH = 255
_INT4_MAX = 2**31 - 1
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1
# About 31 years. A longer timeout would overflow PostgreSQL's interval and
# timestamp types when the deadline is computed, failing every enqueue.
MAX_QUEUE_TIMEOUT = 1e9
# Executions per enqueue_many / complete_many call: one statement carries them
# all, and the queue lock is held while it runs.
MAX_BATCH = 10_000


# A NUL in JSON text: the escape \u0000 after an even number of backslashes
# (an odd number makes it the literal text "\u0000", which is storable).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# What "printable" excludes, the same class as fifoq.valid_name in
# sql/0013_printable_names.sql (tests/integration checks that they agree):
# Unicode categories Cc, Cf, Zl, Zp, Co, and Zs other than the space; also NUL
# and lone surrogates, which a PostgreSQL text value cannot hold at all.
_NOT_PRINTABLE = re.compile(
    "[\\ud800-\\udfff"
    "\\u0000-\\u001f\\u007f-\\u00a0\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890-\\u0891"
    "\\u08e2\\u1680\\u180e\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u2064\\u2066-\\u206f\\u3000"
    "\\ue000-\\uf8ff\\ufeff\\ufff9-\\ufffb\\U000110bd\\U000110cd\\U00013430-\\U00013438"
    "\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0001\\U000e0020-\\U000e007f"
    "\\U000f0000-\\U000ffffd\\U00100000-\\U0010fffd]"
)


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1-{MAX_NAME_LENGTH} characters, got {len(name)}"
    bad = _NOT_PRINTABLE.search(name)
    if bad:
        return (
            f"must contain only printable characters, but has U+{ord(bad.group()):04X} at "
            f"position {bad.start() + 1} (control, format, separator and private-use "
            "characters are not allowed; the space is)"
        )
    return None


def check_action(action: object) -> str:
    """Return the action name, or raise InvalidInput saying what is wrong with it."""
    problem = _name_problem(action)
    if problem:
        raise InvalidInput(f"invalid action name {action!r}: {problem}")
    return action  # type: ignore[return-value]


def check_group(group: object) -> str | None:
    """Return the group name (None for the default group), or raise InvalidInput."""
    if group is None or group == "":
        return None
    problem = _name_problem(group)
    if problem:
        raise InvalidInput(f"invalid group name {group!r}: {problem}")
    return group  # type: ignore[return-value]


def to_json(value: Any, *, what: str, limit: int) -> str | None:
    """Serialise a payload or result to JSON text, enforcing the size limit."""
    if value is None:
        return None
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from None
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise InvalidInput(f"{what} contains a NUL character, which PostgreSQL cannot store")
    _check_encodable(text, what)
    size = len(text.encode("utf-8"))
    if size > limit:
        raise InvalidInput(f"{what} is {size} bytes of JSON, over the limit of {limit} bytes")
    return text


def check_execution_id(execution_id: object) -> int:
    """Return an execution id, or raise InvalidInput (not an integer) or UnknownExecution.

    Ids are bigints: an integer outside that range names no execution, which
    is said as such rather than left to fail as a type error in the database.
    """
    if isinstance(execution_id, bool) or not isinstance(execution_id, int):
        raise InvalidInput(f"execution ids are integers, got {execution_id!r}")
    if not _INT8_MIN <= execution_id <= _INT8_MAX:
        raise UnknownExecution(f"unknown execution {execution_id}")
    return execution_id


def check_error_text(error: object) -> str | None:
    """Return an execution's error text (None: no error), or raise InvalidInput."""
    if error is not None and not isinstance(error, str):
        raise InvalidInput(f"error must be a string, got {type(error).__name__}")
    if error is not None and "\x00" in error:
        raise InvalidInput("error contains a NUL character, which PostgreSQL cannot store")
    if error is not None:
        _check_encodable(error, "error")
    return error


def _check_encodable(text: str, what: str) -> None:
    """Raise InvalidInput if ``text`` holds a lone surrogate (no UTF-8 form, so no text value)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidInput(
            f"{what} contains a lone surrogate U+{code:04X}, which is not valid Unicode"
        ) from None


def as_list(values: object, *, what: str, item: str) -> list[Any]:
    """A batch argument as a list; InvalidInput for a lone value or a non-iterable."""
    if isinstance(values, str | bytes | dict) or not isinstance(values, Iterable):
        raise InvalidInput(f"{what} must be a list of {item}, got a {type(values).__name__}")
    return list(values)


def check_timeout(timeout: object) -> float | None:
    """A wait's timeout: None (wait as long as it takes) or seconds, at least 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidInput(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidInput(
            f"timeout must be at least 0 seconds (None waits forever), got {timeout!r}"
        )
    return None if math.isinf(timeout) else float(timeout)


def check_batch_size(count: int, *, what: str) -> None:
    """Raise InvalidInput when a batch holds more than :data:`MAX_BATCH` items."""
    if count > MAX_BATCH:
        raise InvalidInput(f"{what}: {count} in one call, over the limit of {MAX_BATCH}")


def check_limit(limit: object, *, maximum: int) -> int:
    """Return a row limit (an integer from 1 to ``maximum``), or raise InvalidInput."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}, got {limit!r}")
    return limit


def _check_int(action: str, field: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPolicy(
            f"invalid policy for action {action!r}: {field} must be an integer, got {value!r}"
        )
    if not minimum <= value <= _INT4_MAX:
        raise InvalidPolicy(
            f"invalid policy for action {action!r}: {field} must be between "
            f"{minimum} and {_INT4_MAX}, got {value}"
        )
    return value


def check_policy(
    action: object,
    *,
    max_concurrent: object,
    max_queue_length: object,
    queue_timeout: object,
    on_limit: object,
    group_by: object,
) -> tuple[str, int, int, float | None, str, list[str]]:
    """Validate policy values; raise InvalidPolicy naming the first bad one."""
    problem = _name_problem(action)
    if problem:
        raise InvalidPolicyName(f"invalid policy: action name {action!r} {problem}")
    name: str = action  # type: ignore[assignment]
    limit = _check_int(name, "max_concurrent", max_concurrent, 1)
    length = _check_int(name, "max_queue_length", max_queue_length, 0)
    timeout: float | None = None
    if queue_timeout is not None:
        if isinstance(queue_timeout, bool) or not isinstance(queue_timeout, int | float):
            raise InvalidPolicy(
                f"invalid policy for action {name!r}: queue_timeout must be a number of "
                f"seconds, got {queue_timeout!r}"
            )
        timeout = float(queue_timeout)
        if not (math.isfinite(timeout) and timeout > 0):
            raise InvalidPolicy(
                f"invalid policy for action {name!r}: queue_timeout must be a positive "
                f"number of seconds, got {queue_timeout!r}"
            )
        if timeout > MAX_QUEUE_TIMEOUT:
            raise InvalidPolicy(
                f"invalid policy for action {name!r}: queue_timeout must be at most "
                f"{MAX_QUEUE_TIMEOUT:.0f} seconds (None waits forever), got {queue_timeout!r}"
            )
    if on_limit not in ("enqueue", "reject"):
        raise InvalidPolicy(
            f"invalid policy for action {name!r}: on_limit must be 'enqueue' or 'reject', "
            f"got {on_limit!r}"
        )
    if isinstance(group_by, str) or not isinstance(group_by, list | tuple):
        raise InvalidPolicy(
            f"invalid policy for action {name!r}: group_by must be a sequence of payload "
            f"keys, got {group_by!r}"
        )
    keys: list[str] = []
    for key in group_by:
        key_problem = _name_problem(key)
        if key_problem:
            raise InvalidPolicy(
                f"invalid policy for action {name!r}: group_by key {key!r} {key_problem}"
            )
        if key in keys:
            # Its value would be in the group twice: the same grouping under
            # other group names (the database refuses it too, sql/0018).
            raise InvalidPolicy(
                f"invalid policy for action {name!r}: group_by names key {key!r} twice"
            )
        keys.append(key)
    return name, limit, length, timeout, str(on_limit), keys
