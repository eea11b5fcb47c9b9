"""The repository's files the tests read (the README, examples/, bench/), wherever the test
module sits below tests/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
BENCH = ROOT / "bench"
