"""Sizes and durations, parsed once at the edge into plain numbers.

Users write ``"64MiB"`` and ``"1m30s"``; everything inside Cube works with
integers of bytes and floats of seconds. Both parsers accept bare numbers too
(bytes, seconds), which is what the JSON API returns.
"""

from __future__ import annotations

import re

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_size(value: str | int | float) -> int:
    """Parse ``"64MiB"``, ``"1.5GB"``, ``"512k"`` or a number of bytes into bytes.

    Raises ``ValueError`` with a message fit to show a user.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a size like '64MiB' or a number of bytes")
    if isinstance(value, int | float):
        if not 0 <= value < float("inf"):
            raise ValueError("size must be a finite number of bytes, not negative")
        return int(value)
    match = _SIZE_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: use a number with a unit such as 64MiB, 1GiB, 500MB"
        )
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if size == float("inf"):  # hundreds of digits: int(inf) would raise OverflowError
        raise ValueError("size is too large")
    return int(size)


def parse_duration(value: str | int | float) -> float:
    """Parse ``"500ms"``, ``"5s"``, ``"1m30s"``, ``"2h"`` or a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a duration like '5s' or a number of seconds")
    if isinstance(value, int | float):
        if not 0 <= value < float("inf"):
            raise ValueError("duration must be a finite number of seconds, not negative")
        return float(value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 5s, 1m30s, 2h")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_size(n: int) -> str:
    """Bytes as a short binary-unit string: ``67108864 -> '64MiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            text = f"{size:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Seconds as a compact age: ``'45s'``, ``'3m'``, ``'2h'``, ``'4d'``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"
