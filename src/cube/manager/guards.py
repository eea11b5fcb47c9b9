"""One change of a record at a time: a lock per key, kept only while someone holds it.

The manager saves a change before it shows it (see :mod:`cube.manager.registry`), and a
save is awaited: between reading a record and publishing its changed copy, another
coroutine may run. Two changes of the same task interleaved there would lose one of
them (both start from the same record, the second published last wins). So a change
takes its record's guard first, and the next change of that record starts from the
result of the one before, as two writers of one row would queue on its lock.

A lock per record, not one for all: changes of different tasks (a hundred placements of
one dispatch pass, the reports of a thousand nodes) are saved without waiting for each
other. A record's lock is dropped once nobody holds or waits for it, so a cluster of
100,000 tasks does not keep 100,000 locks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Guards:
    """Locks by key (a task ID, a node name), made on demand and dropped when unused."""

    def __init__(self) -> None:
        #: Key -> its lock, and how many coroutines hold or wait for it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block (waiting, in turn, for those before)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks.pop(key)
            if users > 1:
                self._locks[key] = (lock, users - 1)

    def busy(self, key: str) -> bool:
        """Whether a change of ``key`` is under way (or waiting)."""
        return key in self._locks
