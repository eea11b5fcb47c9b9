"""Fixtures of the component tests: a manager on a store that makes it wait or refuses
its writes (tests/support/manager_stores.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.manager_stores import OnSqlite, Refused, refused_manager, sqlite_manager


@pytest.fixture
async def refused() -> AsyncIterator[Refused]:
    """A manager with node n1 on a store that refuses its writes while ``refused.store.full``;
    closed after the test."""
    made = refused_manager()
    yield made
    await made.manager.close()


@pytest.fixture
async def on_sqlite(tmp_path: Path) -> AsyncIterator[OnSqlite]:
    """A manager with node n1 on a SQLite store whose write lock a test may hold; closed
    after the test."""
    made = sqlite_manager(tmp_path / "cube.db")
    yield made
    await made.manager.close()
    made.store.close()
