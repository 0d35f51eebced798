"""Fixtures of the end-to-end tests: real `fifoq` processes started through the console script."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Workers


@pytest.fixture
def workers(dsn: str, tmp_path: Path) -> Iterator[Workers]:
    """Start `fifoq worker` processes on the test's database; all stopped afterwards."""
    pool = Workers(dsn, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
