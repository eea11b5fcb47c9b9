"""Where a manager's memory went between two heap reports (``cube.heap``).

``bench/jobs.py --heap-reports DIR`` has the manager write ``heap-0`` once the nodes
have joined and ``heap-1`` once every allocation is Running; this prints the growth
between them: live objects by type (count, shallow bytes) and, if the run traced
(``--tracemalloc N``), the allocation sites that grew most, by the first frame in
Cube's own code (the owner), and by line.

    python bench/heap_report.py DIR [--allocations 10000] [--top 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

MiB = 2**20


def type_growth(before: dict[str, object], after: dict[str, object]) -> list[tuple[str, int, int]]:
    """(type, count added, bytes added), most bytes first."""
    was = {t["type"]: t for t in before["types"]}  # type: ignore[attr-defined]
    rows = []
    for t in after["types"]:  # type: ignore[attr-defined]
        old = was.get(t["type"], {"count": 0, "bytes": 0})
        rows.append((t["type"], t["count"] - old["count"], t["bytes"] - old["bytes"]))
    return sorted(rows, key=lambda r: -r[2])


def owner(trace: tracemalloc.Traceback) -> str:
    """The innermost frame in Cube's own code (else the innermost frame at all)."""
    for frame in trace:  # most recent first
        if "/cube/" in frame.filename and "/site-packages/" not in frame.filename:
            return f"{frame.filename.split('/cube/', 1)[1]}:{frame.lineno}"
    return f"{trace[0].filename}:{trace[0].lineno}"


def site_growth(before: Path, after: Path) -> tuple[Counter[str], Counter[str]]:
    """Bytes added by Cube owner and by allocating line."""
    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    by_owner: Counter[str] = Counter()
    by_line: Counter[str] = Counter()
    for stat in new.compare_to(old, "traceback"):
        by_owner[owner(stat.traceback)] += stat.size_diff
        frame = stat.traceback[0]
        by_line[f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"] += stat.size_diff
    return by_owner, by_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--allocations", type=int, default=0, help="to show bytes per one")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    before, after = (json.loads((args.dir / f"heap-{i}.json").read_text()) for i in (0, 1))
    grown = after["rss_mib"] - before["rss_mib"]
    per = (
        f", {grown * MiB / args.allocations / 1024:.1f} KiB per allocation"
        if args.allocations
        else ""
    )
    print(
        f"resident: {before['rss_mib']:.0f} MiB joined, {after['rss_mib']:.0f} MiB at the end"
        f" (+{grown:.0f} MiB{per}); peak {after['peak_mib']:.0f} MiB"
    )
    print("\nlive objects added, by type (shallow bytes):")
    for name, count, size in type_growth(before, after)[: args.top]:
        print(f"  {size / MiB:8.1f} MiB {count:9,}  {name}")
    snaps = [args.dir / f"heap-{i}.tracemalloc" for i in (0, 1)]
    if all(p.exists() for p in snaps):
        by_owner, by_line = site_growth(*snaps)
        print(f"\ntraced bytes added: {sum(by_owner.values()) / MiB:.1f} MiB; by owner in Cube:")
        for name, size in by_owner.most_common(args.top):
            print(f"  {size / MiB:8.1f} MiB  {name}")
        print("\nby allocating line:")
        for name, size in by_line.most_common(args.top):
            print(f"  {size / MiB:8.1f} MiB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
