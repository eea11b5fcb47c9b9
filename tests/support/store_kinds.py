"""The stores the contract suites run against: each store as it is, and each through
:class:`cube.store.aio.AsyncStore` (what an event loop uses), so that one suite checks
both interfaces of both stores."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from cube.store import OffLoopStore, Store, StoreKind, open_store

#: ``<store>`` or ``<store>-async``.
KINDS = ["memory", "sqlite", "memory-async", "sqlite-async"]


class Awaited:
    """A synchronous face of an :class:`OffLoopStore`: each call is awaited on an event
    loop in a thread of its own, as the manager's loop would await it."""

    def __init__(self, store: OffLoopStore) -> None:
        self._store = store
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-loop")
        self._thread.start()
        self.loop_thread = self._thread

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(method(*args, **kwargs), self._loop).result()

        return call

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._store.aclose(), self._loop).result()

    def stop(self) -> None:
        self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@contextmanager
def opened(kind: str, tmp_path: Path) -> Iterator[Store]:
    """The store ``kind`` names, open in ``tmp_path``; closed afterwards."""
    base, _, via = kind.partition("-")
    store = open_store(cast(StoreKind, base), tmp_path)
    if not via:
        try:
            yield store
        finally:
            store.close()
        return
    awaited = Awaited(OffLoopStore(store, owns=True))
    try:
        yield cast(Store, awaited)
    finally:
        awaited.stop()
