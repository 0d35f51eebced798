"""Exceptions raised by fifoq: one base class, one subclass per failure."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg_pool

__all__ = [
    "ExecutionAbandoned",
    "ExecutionCancelled",
    "ExecutorGone",
    "FifoqError",
    "InvalidInput",
    "InvalidPolicy",
    "InvalidPolicyName",
    "InvalidTransition",
    "OutcomeUnknown",
    "PolicyRejected",
    "QueueFull",
    "QueueTimeout",
    "UnknownExecution",
    "wrap_database_errors",
]


class FifoqError(Exception):
    """A fifoq operation failed."""

    __module__ = "fifoq"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class QueueFull(FifoqError):
    """The queue already holds max_queue_length waiting executions."""

    __module__ = "fifoq"


class QueueTimeout(FifoqError):
    """The execution did not start before its timeout."""

    __module__ = "fifoq"


class ExecutionCancelled(FifoqError):
    """The execution was cancelled."""

    __module__ = "fifoq"


class ExecutionAbandoned(FifoqError):
    """The execution was abandoned: its executor died or closed."""

    __module__ = "fifoq"


class PolicyRejected(FifoqError):
    """The policy says reject, and the execution could not start at once."""

    __module__ = "fifoq"


class UnknownExecution(FifoqError):
    """There is no execution with that id."""

    __module__ = "fifoq"


class InvalidTransition(FifoqError):
    """The execution is not in a status that allows this operation."""

    __module__ = "fifoq"


class ExecutorGone(FifoqError):
    """This executor was reaped (its lease ran out) or closed."""

    __module__ = "fifoq"


# Raised only when a connection was lost while a change was in flight and its
# backend would not end (see fifoq.statements): otherwise fifoq finds out
# what the change did and answers, or runs it again.
class OutcomeUnknown(FifoqError):
    """A change was sent and its connection lost: whether it was made cannot be known."""

    __module__ = "fifoq"


class InvalidPolicy(FifoqError, ValueError):
    """A policy value is out of range."""

    __module__ = "fifoq"


class InvalidInput(FifoqError, ValueError):
    """An action name, group name, payload or result is not acceptable."""

    __module__ = "fifoq"


# Caught as either: ``except InvalidPolicy`` (everything set_policy refuses)
# and ``except InvalidInput`` (every bad action name, SPEC §4) both see it.
class InvalidPolicyName(InvalidPolicy, InvalidInput):
    """A policy's action name is not acceptable: a bad policy value, and bad input."""

    __module__ = "fifoq"


# SQLSTATEs raised by the SQL functions (sql/0002_protocol.sql).
_BY_SQLSTATE: dict[str, type[FifoqError]] = {
    "FQ400": InvalidPolicy,
    "FQ403": PolicyRejected,
    "FQ404": UnknownExecution,
    "FQ409": InvalidTransition,
    "FQ410": ExecutorGone,
    "FQ422": InvalidInput,
    "FQ429": QueueFull,
}


# Not found: the schema, a table or view, a function, a type. Raised for one
# of fifoq's objects, it means the schema was never migrated here, or is
# older than this package.
_SCHEMA_MISSING = frozenset({"3F000", "42P01", "42883", "42704"})
# Names fifoq's schema or an object in it ('schema "fifoq"', 'relation
# "fifoq.executions"', 'function fifoq.enqueue(...)'): the primary message
# only, as str(exc) also quotes the statement, which may be a caller's own.
_FIFOQ_OBJECT = re.compile(r'"fifoq"|\bfifoq\.')
_MIGRATE_HINT = (
    " (is the fifoq schema installed and up to date? run `fifoq migrate` or fifoq.migrate())"
)

# Control characters, escaped in messages from the database.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _one_line(message: str) -> str:
    # The SQL functions quote names with %L, which keeps control characters
    # as they are: a group name taken from a payload could break the message
    # over several lines. Escape them the way repr() does.
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)


def error_from_database(exc: psycopg.Error) -> FifoqError | None:
    """The fifoq error a database error stands for, or None if it is not one of ours."""
    sqlstate = exc.sqlstate or ""
    cls = _BY_SQLSTATE.get(sqlstate)
    if cls is not None:
        return cls(_one_line(exc.diag.message_primary or str(exc)))
    if sqlstate in ("22P02", "22P05", "22021", "54000", "54001"):
        # invalid JSON text, untranslatable character, bad encoding, too deep
        return InvalidInput(_one_line(exc.diag.message_primary or str(exc)))
    primary = exc.diag.message_primary or ""
    if sqlstate in _SCHEMA_MISSING and _FIFOQ_OBJECT.search(primary):
        return FifoqError(_one_line(primary) + _MIGRATE_HINT)
    return None


@contextmanager
def wrap_database_errors() -> Iterator[None]:
    """Re-raise the database errors of fifoq's SQL functions as fifoq errors, cause kept."""
    try:
        yield
    except psycopg_pool.PoolClosed as exc:
        # A call after close(): the caller catches FifoqError, not psycopg_pool's.
        raise FifoqError(
            "this QueueManager is closed (or the pool it was given is): its connection pool "
            "is closed"
        ) from exc
    except psycopg.Error as exc:
        mapped = error_from_database(exc)
        if mapped is None:
            raise
        raise mapped from exc
