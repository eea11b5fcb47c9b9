"""Waiting for what a test expects, by polling the thing that would show it (never a bare
sleep): fail naming what was awaited, with the last value seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar


def wait_for(
    predicate: Any, *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate} (last: {last!r})"
    )


def wait_task_state(
    read: Callable[[], dict[str, Any]],
    task_id: str,
    state: str,
    *,
    timeout: float = 30,
    logs: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Poll ``read()`` (the task's JSON) until the task is in ``state``, and return it;
    on time-out, with the tail of ``logs()`` (the agent's log) in the failure."""

    def reached() -> dict[str, Any] | None:
        task = read()
        return task if task["state"] == state else None

    try:
        return dict(wait_for(reached, timeout=timeout, what=f"task {task_id} to be {state}"))
    except AssertionError as exc:
        if logs is None:
            raise
        raise AssertionError(f"{exc}\n--- log ---\n{logs()[-4000:]}") from None


T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 5.0,  # noqa: ASYNC109 - failing with the last value beats a bare TimeoutError
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s (last value: {value!r})")
        await asyncio.sleep(0.005)
