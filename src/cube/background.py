"""Background coroutines that are never lost silently.

``asyncio.create_task`` drops exceptions of tasks nobody awaits; :func:`spawn`
logs them, and keeps a reference (asyncio only holds weak ones) when asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from cube.errors import CubeError
from cube.log import get_logger

log = get_logger("cube.background")

T = TypeVar("T")


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
        log.error("background task crashed", what=task.get_name(), error=repr(exc))
