"""The debugging hook of cube.heap: a heap report counts the frozen objects too, and
leaves them frozen (the agents freeze what survives: no long GC pauses)."""

from __future__ import annotations

import gc
import json
import signal
from pathlib import Path

from cube.heap import REPORT_ENV, heap_reports_on_signal, write_heap_report


class Marker:
    pass


def test_a_report_counts_frozen_objects_and_leaves_them_frozen(tmp_path: Path) -> None:
    kept = [Marker() for _ in range(50)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        path = write_heap_report(tmp_path)
        assert gc.get_freeze_count() >= frozen
        report = json.loads(path.read_text())
        types = {t["type"]: t["count"] for t in report["types"]}
        assert types[f"{__name__}.Marker"] == len(kept)
        assert report["rss_mib"] > 0
        assert write_heap_report(tmp_path).name == "heap-1.json"
    finally:
        gc.unfreeze()


def test_the_signal_writes_only_when_asked(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    try:
        assert not heap_reports_on_signal({})
        assert signal.getsignal(signal.SIGUSR2) is before
        assert heap_reports_on_signal({REPORT_ENV: str(tmp_path)})
        signal.raise_signal(signal.SIGUSR2)
        assert (tmp_path / "heap-0.json").exists()
    finally:
        signal.signal(signal.SIGUSR2, before)
