"""Where Cube keeps tasks, their events and nodes: the :class:`Store` seam and its two stores."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cube.store.aio import AsyncStore, OffLoopStore
from cube.store.base import Store
from cube.store.memory import MemoryStore
from cube.store.sqlite import SqliteStore

__all__ = [
    "AsyncStore",
    "MemoryStore",
    "OffLoopStore",
    "SqliteStore",
    "Store",
    "StoreKind",
    "open_store",
]

StoreKind = Literal["memory", "sqlite"]

#: The file a SQLite store keeps in the data directory.
SQLITE_FILENAME = "cube.db"


def open_store(kind: StoreKind, data_dir: Path) -> Store:
    """Open the store the user chose; ``data_dir`` is only used by the SQLite store."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(data_dir / SQLITE_FILENAME)
    raise ValueError(f"unknown store kind {kind!r}; expected 'memory' or 'sqlite'")
