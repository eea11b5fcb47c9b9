"""Short garbage-collector pauses for long-running agents.

A manager holds tens of thousands of long-lived objects (tasks, nodes, their models), and
CPython's full collection walks every object it tracks, each time the heap has grown by
a quarter: while 10,000 tasks arrived (bench/manager.py), full passes of 300-550 ms
stopped the event loop, and every API call and poll waited behind them, to free about a
thousand objects each time.

What survives a full collection is long-lived by definition. :func:`gc.freeze` moves it
out of the collector's sight (Instagram's fix for the same pauses), so the next full pass
walks only what is newer. Frozen objects are still freed by reference counting as soon as
nothing refers to them; only a reference cycle among them would never be collected, and
the agents' records do not form cycles.
"""

from __future__ import annotations

import gc
from typing import Any


def freeze_survivors() -> None:
    """From now on, freeze what each full collection leaves (and what exists already)."""
    if _freeze_after_full in gc.callbacks:
        return
    gc.freeze()
    gc.callbacks.append(_freeze_after_full)


def _freeze_after_full(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()
