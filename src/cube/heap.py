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

import contextlib
import gc
import json
import os
import signal
import sys
import tracemalloc
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
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


# --- where the memory goes (debugging only, never on by default) --------------------------------
#: A directory: while it is set, SIGUSR2 makes the agent write a heap report there
#: (:func:`write_heap_report`). Start the process with ``PYTHONTRACEMALLOC=N`` as well for
#: allocation sites with N frames (tracemalloc doubles the memory and slows the process).
REPORT_ENV = "CUBE_HEAP_REPORTS"


def heap_reports_on_signal(environ: Mapping[str, str] = os.environ) -> bool:
    """Let SIGUSR2 write a heap report into ``$CUBE_HEAP_REPORTS``; False if it is unset."""
    directory = environ.get(REPORT_ENV)
    if not directory:
        return False
    signal.signal(signal.SIGUSR2, lambda _sig, _frame: write_heap_report(Path(directory)))
    return True


def write_heap_report(directory: Path) -> Path:
    """Write ``heap-N.json`` (live objects by type: count and shallow bytes, and the
    resident memory) and, if tracemalloc traces, ``heap-N.tracemalloc`` (a snapshot, for
    ``bench/heap_report.py``). Returns the JSON's path.

    Frozen objects (:func:`freeze_survivors`) are invisible to :func:`gc.get_objects`, so
    the count unfreezes them and freezes them again: a full collection's worth of work.
    """
    directory.mkdir(parents=True, exist_ok=True)
    n = len(list(directory.glob("heap-*.json")))
    gc.unfreeze()
    try:
        counts: Counter[str] = Counter()
        sizes: Counter[str] = Counter()
        for obj in gc.get_objects():
            kind = type(obj)
            name = f"{kind.__module__}.{kind.__qualname__}"
            counts[name] += 1
            sizes[name] += sys.getsizeof(obj)
    finally:
        gc.freeze()
    rss = _status_kib("VmRSS")
    report = {
        "rss_mib": rss / 1024,
        "peak_mib": _status_kib("VmHWM") / 1024,
        "traced_mib": tracemalloc.get_traced_memory()[0] / 2**20,
        "types": [
            {"type": name, "count": counts[name], "bytes": size}
            for name, size in sizes.most_common(200)
        ],
    }
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"heap-{n}.tracemalloc"))
    path = directory / f"heap-{n}.json"
    path.write_text(json.dumps(report, indent=1))
    return path


def _status_kib(field: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0
