"""Mapping of the SQL functions' SQLSTATEs to fifoq exceptions, and their messages."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import fifoq
from fifoq.errors import error_from_database, wrap_database_errors


class FakeDiag:
    def __init__(self, message: str) -> None:
        self.message_primary = message


class FakeError(psycopg.Error):
    """A psycopg error with a chosen SQLSTATE and message, as the server would send it."""

    def __init__(self, sqlstate: str, message: str) -> None:
        self._state = sqlstate  # before psycopg's __init__, which reads sqlstate
        self._fake_diag = FakeDiag(message)
        super().__init__(message)

    @property
    def sqlstate(self) -> str | None:  # type: ignore[override]
        return self._state

    @property
    def diag(self) -> Any:
        return self._fake_diag


@pytest.mark.parametrize(
    ("sqlstate", "cls"),
    [
        ("FQ400", fifoq.InvalidPolicy),
        ("FQ403", fifoq.PolicyRejected),
        ("FQ404", fifoq.UnknownExecution),
        ("FQ409", fifoq.InvalidTransition),
        ("FQ410", fifoq.ExecutorGone),
        ("FQ422", fifoq.InvalidInput),
        ("FQ429", fifoq.QueueFull),
        ("22P02", fifoq.InvalidInput),  # invalid JSON text
        ("54001", fifoq.InvalidInput),  # nested too deeply
    ],
)
def test_sqlstates_map_to_fifoq_errors(sqlstate: str, cls: type[fifoq.FifoqError]) -> None:
    mapped = error_from_database(FakeError(sqlstate, "what went wrong"))
    assert type(mapped) is cls
    assert str(mapped) == "what went wrong"


def test_other_database_errors_are_not_ours() -> None:
    assert error_from_database(FakeError("40P01", "deadlock detected")) is None
    with pytest.raises(FakeError), wrap_database_errors():
        raise FakeError("57P01", "terminating connection")


def test_wrapped_errors_keep_their_cause() -> None:
    original = FakeError("FQ404", "unknown execution 1")
    with pytest.raises(fifoq.UnknownExecution) as info, wrap_database_errors():
        raise original
    assert info.value.__cause__ is original


def test_messages_from_the_database_are_one_line() -> None:
    mapped = error_from_database(FakeError("FQ422", "invalid group name 'a\nb\x00c\x9b' for x"))
    assert str(mapped) == "invalid group name 'a\\nb\\x00c\\x9b' for x"


def test_every_error_is_public_with_a_default_message() -> None:
    for name in fifoq.errors.__all__:
        cls = getattr(fifoq, name, None)
        if not (isinstance(cls, type) and issubclass(cls, fifoq.FifoqError)):
            continue
        assert cls.__module__ == "fifoq"
        assert str(cls()) == (cls.__doc__ or "").strip()
        assert "\n" not in str(cls())
