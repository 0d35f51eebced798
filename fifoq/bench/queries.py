"""Loads the named queries of ``bench.sql``, the benchmark's own SQL."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import LiteralString

__all__ = ["query"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    text = files("fifoq.bench").joinpath("bench.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> LiteralString:
    """The text of the named benchmark query (a constant file, never user input).

    Run it with a parameter mapping (an empty one if it takes none), so that
    ``%%`` in the file reaches the server as ``%``.
    """
    text: LiteralString = _load()[name]
    return text
