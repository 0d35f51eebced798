"""Recognising a change whose reply was lost: request tokens and the look-ups.

When a connection drops with no SQLSTATE while a change is in flight,
:class:`~fifoq.statements.Statements` ends the lost backend and asks the
caller's *reconcile* what the change did before anything runs again (see
``statements.py``). This module holds the two such look-ups the manager
uses, and the request tokens that let a lost enqueue be found
(``sql/0021_request_token.sql``).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .queries import query
from .statements import Reconcile, array_literal

__all__ = ["find_completed", "find_request", "tokens"]


class RequestTokens:
    """Request tokens (sql/0021): a random 62-bit start per process, then counting.

    A token costs a next() and never repeats in this process; two
    processes' ranges meet with negligible odds. A forked child draws a new
    start, or it would repeat its parent's tokens.
    """

    def __init__(self) -> None:
        self.draw()

    def draw(self) -> None:
        self._count = itertools.count(int.from_bytes(os.urandom(8)) >> 2)

    def __next__(self) -> int:
        return next(self._count)


tokens = RequestTokens()
os.register_at_fork(after_in_child=tokens.draw)


def find_request(request: int) -> Reconcile:
    """Reconcile a lost enqueue: the executions stored with its token, or None (not stored)."""

    async def find(
        conn: psycopg.AsyncConnection[Any], elapsed: float
    ) -> list[dict[str, Any]] | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            # It reads the executions enqueued since the call began.
            await cur.execute(query("find_request"), {"request": request, "elapsed": elapsed})
            rows = await cur.fetchall()
        return rows or None

    return find


def find_completed(
    ids: list[int], results: list[str | None], errors: list[str | None]
) -> Reconcile:
    """Reconcile a lost completion: the executions if all have the outcome asked, else None.

    A batch commits whole or not at all, so all of them finished exactly as
    asked means it committed (or, as good, someone recorded the same
    outcomes); otherwise it runs again, and fails as it would have if the
    executions are no longer active.
    """

    async def find(
        conn: psycopg.AsyncConnection[Any], elapsed: float
    ) -> list[dict[str, Any]] | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                query("find_completed"),
                {
                    "ids": array_literal(ids),
                    "results": array_literal(results),
                    "errors": array_literal(errors),
                },
            )
            rows = await cur.fetchall()
        return rows if len(rows) == len(ids) else None

    return find
