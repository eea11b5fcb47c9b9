"""What a worker knows of its container engine's outages: the facts behind "not counted".

An engine restart stops every container, and a stopping engine refuses starts for
a moment: none of that is a task's failure (see :func:`cube.task.restart.ended_by_engine`).
The worker notes each time it loses the engine (a refused call, a dropped event
stream) and when it answers again; a runner asks for the facts, and a fresh ping,
before it counts an ending against ``max_attempts``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from cube.errors import RuntimeUnavailable
from cube.runtime.base import ContainerRuntime
from cube.task.restart import EngineFacts, Outage

#: Outages remembered: only recent ones can explain an ending a runner is deciding about.
KEEP_OUTAGES = 16


class EngineWatch:
    """The worker's record of when its engine was out of reach. One per worker."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._outages: deque[Outage] = deque(maxlen=KEEP_OUTAGES)
        #: Calls of :meth:`lost`: the worker's ``cube_worker_engine_errors_total``.
        self.errors = 0

    @property
    def down(self) -> bool:
        return bool(self._outages) and self._outages[-1].end is None

    def lost(self) -> None:
        """A call was refused or the event stream dropped: an outage begins (unless one is on)."""
        self.errors += 1
        if not self.down:
            self._outages.append(Outage(start=self._clock()))

    def back(self) -> None:
        """The engine answered: the current outage, if any, ends now."""
        if self.down:
            self._outages[-1] = Outage(start=self._outages[-1].start, end=self._clock())

    async def facts(self, runtime: ContainerRuntime) -> EngineFacts:
        """Ping the engine (on a new connection) and return what is known, this ping included."""
        try:
            await runtime.ping()
        except RuntimeUnavailable:
            self.lost()
            return EngineFacts(answering=False, outages=tuple(self._outages))
        self.back()
        return EngineFacts(answering=True, outages=tuple(self._outages))
