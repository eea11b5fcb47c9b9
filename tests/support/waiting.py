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
