"""Which tasks changed on this node, for the manager's blocking queries.

Like Nomad's and Consul's blocking queries: every answer carries an index, and a
query that names the index of the last answer it saw waits until something newer
exists (or a deadline passes), then gets only the tasks that changed since. The
manager learns of a started or crashed container as soon as the runner records it,
instead of at its next poll, and a quiet node costs one small answer per wait.

The index is ``<epoch>.<version>``: the epoch is new each time the worker starts, so
an index from before a restart is never mistaken for a recent one; the caller then
gets the complete list, as on its first query.

**Coalescing.** A task's start is several changes a few milliseconds apart (accepted,
starting, running), and a node given several tasks at once makes a burst of them. Answered
one by one, each costs the node an answer and the manager a round trip and a parse: 41 %
of a 1,000-node manager's CPU and 37 % of the simulated fleet's (py-spy, docs/benchmarks.md
section 5). So a query woken by a change may wait a short ``window`` more before it answers,
and gets every change of that window in one reply, as Nomad's blocking queries return the
state at the index reached rather than each write. A query that finds changes already
there answers at once; a lone change waits only the window, never the query's ``wait``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from cube.background import wait_event

Sleep = Callable[[float], Awaitable[None]]


class ChangeFeed:
    """A version counter bumped by every recorded change of a task, and who changed when."""

    def __init__(self, *, window: float = 0.0, sleep: Sleep = asyncio.sleep) -> None:
        """``window``: seconds a query woken by a change waits for more before it answers
        (see the module docstring); ``sleep`` is how it waits (a test passes its own)."""
        self.window = window
        self._sleep = sleep
        #: Queries woken by a change that then waited the window (a counter for tests).
        self.woken = 0
        self.epoch = secrets.token_hex(4)
        self.version = 0
        self._changed_at: dict[str, int] = {}
        self._event = asyncio.Event()
        self._closed = False

    @property
    def index(self) -> str:
        return f"{self.epoch}.{self.version}"

    def changed(self, task_id: str) -> None:
        """Record that ``task_id`` changed, and wake every query waiting for a change."""
        self.version += 1
        self._changed_at[task_id] = self.version
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """Answer every waiting query now, and every later one at once: the worker is
        shutting down, and its server waits for the requests in flight to finish."""
        self._closed = True
        self._event.set()

    async def since(self, index: str, *, wait: float) -> list[str] | None:
        """IDs of the tasks changed after ``index``, waiting up to ``wait`` seconds for one.

        None if ``index`` is not one of this worker's (another epoch, or malformed):
        the caller must then look at every task.
        """
        epoch, _, number = index.partition(".")
        if epoch != self.epoch or not number.isdigit() or int(number) > self.version:
            return None
        seen = int(number)
        if seen == self.version and wait > 0 and not self._closed:
            await wait_event(self._event, wait)
            if self.version > seen and self.window > 0 and not self._closed:
                self.woken += 1
                await self._sleep(self.window)  # the rest of the burst
        return [task_id for task_id, version in self._changed_at.items() if version > seen]
