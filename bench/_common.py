"""What the benchmark scripts share: the machine they ran on, tables, percentiles, JSON.

Not part of the ``cube`` package: the scripts in ``bench/`` put this directory on
``sys.path`` by being run as ``python bench/NAME.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran: enough to tell two runs' machines apart."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_gib": round(memory / 1024**3, 1),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parent,
        )
    except OSError:
        return ""
    return out.stdout.strip()


#: Credentials a caller's environment may hold (a shell, the test suite). The agents a
#: benchmark starts make their own tokens, which the benchmark reads from their data dirs.
CREDENTIALS = ("CUBE_TOKEN", "CUBE_JOIN_TOKEN", "CUBE_WORKER_TOKEN")


def agent_env(**extra: str) -> dict[str, str]:
    """The environment for a ``cube`` process a benchmark starts: ours, without credentials."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table (also readable in a terminal): ``columns`` are (key, header)."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for r in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def save_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"saved {path}", file=sys.stderr)


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as the PNG ``docs/benchmarks.md`` shows."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"saved {path}", file=sys.stderr)


def ints(text: str) -> list[int]:
    """A comma-separated list of counts: ``1000,5_000``."""
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def names_of(known: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of some of ``known``."""

    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        if unknown := set(names) - set(known):
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; know {list(known)}")
        return names

    return parse


def output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``--plot``, the same in every script."""
    parser.add_argument("--json", type=Path, help="save the results here")
    parser.add_argument("--plot", type=Path, help="save a PNG plot here (needs matplotlib)")
