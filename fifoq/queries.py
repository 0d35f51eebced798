"""Loads named queries from ``.sql`` files, so SQL stays in files runnable in psql.

A file holds blocks that start with a ``-- name: NAME`` line. fifoq's own
statements are in ``queries.sql``; the demo and the benchmark keep theirs in
their own files and load them with :func:`load`.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import LiteralString

__all__ = ["load", "query"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(package: str, filename: str) -> dict[str, LiteralString]:
    """The named queries of a ``.sql`` file shipped in ``package``, by name."""
    text = files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> LiteralString:
    """The text of one of fifoq's own queries (a constant file, never user input)."""
    return load("fifoq", "queries.sql")[name]
