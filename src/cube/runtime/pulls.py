"""One pull per image at a time, shared by every task that needs it.

A burst of tasks with the same image must not become a burst of pulls: each pull holds a
connection to the engine for as long as the registry takes, and a registry that never
answers would hold them all (Docker gives up on an unreachable registry after ~30 s).
kubelet serializes pulls and Nomad's Docker driver shares one pull between the tasks
that wait for the same image; this is the second.

The pull is a background job that outlives any one waiter: a task stopped while it waits
stops waiting at once, and the pull goes on for the others. When the last waiter has
gone, the pull is cancelled, so a stop still cuts a lone pull short. A failed pull is not
remembered: the next task to need the image tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cube.runtime.base import ProgressCallback

#: Pulls (or finds) one image, reporting progress lines to the callback.
PullFunction = Callable[[str, ProgressCallback], Awaitable[None]]


@dataclass
class _Pull:
    job: asyncio.Task[None]
    waiters: int = 0
    listeners: list[ProgressCallback] = field(default_factory=list)

    def progress(self, message: str) -> None:
        for listener in list(self.listeners):
            listener(message)


class SharedPulls:
    """Run ``pull`` once per image however many callers want it at the same time."""

    def __init__(self, pull: PullFunction) -> None:
        self._pull = pull
        self._active: dict[str, _Pull] = {}

    def __len__(self) -> int:
        """How many images are being pulled now."""
        return len(self._active)

    async def __call__(self, image: str, on_progress: ProgressCallback | None = None) -> None:
        active = self._active.get(image)
        if active is None or active.job.done():  # a finished pull's outcome is not reused
            active = self._start(image)
        active.waiters += 1
        if on_progress is not None:
            active.listeners.append(on_progress)
        try:
            # shield: cancelling this waiter must not cancel the pull the others wait for.
            await asyncio.shield(active.job)
        finally:
            active.waiters -= 1
            if on_progress is not None:
                active.listeners.remove(on_progress)
            if active.waiters == 0 and not active.job.done():
                # Nobody wants it any more. Forget it now: a caller arriving while it
                # winds down must start its own pull, not inherit the cancellation.
                self._forget(image, active)
                active.job.cancel()

    def _start(self, image: str) -> _Pull:
        async def pull() -> None:
            await self._pull(image, active.progress)

        active = _Pull(asyncio.get_running_loop().create_task(pull(), name=f"pull {image}"))
        self._active[image] = active

        def finished(job: asyncio.Task[None]) -> None:
            self._forget(image, active)
            if not job.cancelled():
                job.exception()  # every waiter got it; don't log it as never retrieved

        active.job.add_done_callback(finished)
        return active

    def _forget(self, image: str, pull: _Pull) -> None:
        if self._active.get(image) is pull:
            del self._active[image]
