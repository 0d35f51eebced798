"""The benchmark's own SQL: the named queries of ``bench.sql``."""

from __future__ import annotations

from typing import LiteralString

from ..queries import load

__all__ = ["query"]


def query(name: str) -> LiteralString:
    """The text of the named benchmark query (a constant file, never user input).

    Run it with a parameter mapping (an empty one if it takes none), so that
    ``%%`` in the file reaches the server as ``%``.
    """
    return load("fifoq.bench", "bench.sql")[name]
