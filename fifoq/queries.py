"""Loads the named queries of ``queries.sql``, so SQL stays in a file runnable in psql."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import LiteralString

__all__ = ["query"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    text = files("fifoq").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> LiteralString:
    """The text of the named query (a constant file, never user input)."""
    return _load()[name]  # text of a constant file, never user input
