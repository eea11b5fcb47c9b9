"""Background coroutines that are never lost silently, and loops that never die for good.

``asyncio.create_task`` drops exceptions of tasks nobody awaits; :func:`spawn`
logs them, and keeps a reference (asyncio only holds weak ones) when asked.

An agent's long-running loops (the manager's dispatch, collection and node watches,
the worker's event and metric loops) run under a :class:`Supervisor`: a loop that
crashes (a full disk under the store, a bug) is started again after a backoff, its
traceback is logged once per new error, and the agent's health reports it until it
has run without crashing for a while. Without this, one failed write stopped the
manager's dispatch for good while its API kept answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from cube.errors import CubeError
from cube.log import get_logger

log = get_logger("cube.background")

T = TypeVar("T")

#: The pause before a crashed loop runs again; doubled after each crash, up to the maximum.
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 10.0
#: A loop that crashed less than this many seconds ago makes the agent's health "degraded".
#: A loop that runs again without crashing is healthy after this; one that keeps crashing
#: (a full disk) crashes again within MAX_BACKOFF, so it stays degraded all along.
TROUBLE_WINDOW = 30.0


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, at most ``seconds``; returns whether it is set.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` returns
    normally when the cancellation of its caller arrives in the same turn of the loop as
    the event (CPython gh-86296, fixed in 3.12), so a loop told to stop while woken went
    on running, and the agent's close() waited on it for ever. Ruff bans ``wait_for`` in
    ``src`` (TID251, pyproject.toml) for the same reason.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def spawn(
    coro: Coroutine[Any, Any, T], name: str, *, keep: set[asyncio.Task[Any]] | None = None
) -> asyncio.Task[T]:
    """Start ``coro`` in the background; log it if it fails; hold it in ``keep`` until done."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    if keep is not None:
        keep.add(task)
        task.add_done_callback(keep.discard)
    task.add_done_callback(_report)
    return task


async def cancel_all(tasks: set[asyncio.Task[Any]] | list[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they have all finished."""
    pending = list(tasks)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _report(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or (exc := task.exception()) is None:
        return
    if isinstance(exc, CubeError):
        log.warning("background call failed", what=task.get_name(), error=exc.message)
    else:
        log.error("background task crashed", what=task.get_name(), error=repr(exc), exc=exc)


def describe(exc: BaseException) -> str:
    """A one-line account of an error: a CubeError's message, else its type and text."""
    return exc.message if isinstance(exc, CubeError) else f"{type(exc).__name__}: {exc}"


@dataclass
class LoopTrouble:
    """How a supervised loop has fared: it has crashed ``restarts`` times so far."""

    restarts: int = 0
    last_error: str = ""
    #: time.monotonic() of the last crash.
    last_crash: float = 0.0

    def failing(self, now: float) -> bool:
        return self.restarts > 0 and now - self.last_crash < TROUBLE_WINDOW


class Supervisor:
    """Runs an agent's loops, starting a crashed one again with backoff."""

    def __init__(self, component: str) -> None:
        self.component = component
        #: Loop name -> its crashes; only loops that crashed at least once are here.
        self.trouble: dict[str, LoopTrouble] = {}

    def start(
        self,
        name: str,
        loop: Callable[[], Coroutine[Any, Any, None]],
        *,
        keep: set[asyncio.Task[Any]] | None = None,
    ) -> asyncio.Task[None]:
        """Run ``loop()`` until it returns or is cancelled; a crash calls it again."""
        return spawn(self._run(name, loop), name, keep=keep)

    def degraded(self, now: float) -> bool:
        """Whether a loop crashed within :data:`TROUBLE_WINDOW` seconds of ``now``."""
        return any(t.failing(now) for t in self.trouble.values())

    async def _run(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            try:
                await loop()
                return
            except Exception as exc:  # the point: nothing ends the loop for good
                now = time.monotonic()
                if now - started > MAX_BACKOFF:  # it ran well for a while: a new streak
                    delay = FIRST_BACKOFF
                self._crashed(name, exc, now=now, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def _crashed(self, name: str, exc: Exception, *, now: float, retry_in: float) -> None:
        trouble = self.trouble.setdefault(name, LoopTrouble())
        error = describe(exc)
        fields = {"component": self.component, "loop": name, "error": error, "retry_in": retry_in}
        if error != trouble.last_error:  # a new error: its traceback, once
            log.error("background loop crashed; restarting it", exc=exc, **fields)
        else:
            log.warning("background loop crashed again; restarting it", **fields)
        trouble.restarts += 1
        trouble.last_error = error
        trouble.last_crash = now
