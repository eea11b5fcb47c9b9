"""A job's history: each version with what changed since the one before (pure).

``cube job history`` prints it; ``GET /v1/jobs/{id}/history`` returns it. A change is one
line per field, at the path a user writes in the job file (``groups[0].tasks[0].image``)::

    ~ groups[0].tasks[0].image: cube-busybox:1 -> cube-busybox:2
    + update.canary: 1
    - groups[0].constraints.zone: a

Secret env values are compared by their hidden form, so a history never shows a secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from cube.job.model import JobVersion
from cube.job.parse import field_path
from cube.job.spec import JobSpec


def _flatten(value: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):  # an empty one says nothing: its fields are absent
        for key, item in value.items():
            yield from _flatten(item, (*at, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _flatten(item, (*at, i))
    else:
        yield field_path(at), value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def diff(before: JobSpec | None, after: JobSpec) -> list[str]:
    """The fields that differ from ``before`` to ``after``, one line each, in file order."""
    new = dict(_flatten(after.model_dump(mode="json", exclude_defaults=True)))
    if before is None:
        return []
    old = dict(_flatten(before.model_dump(mode="json", exclude_defaults=True)))
    lines = []
    for path, value in new.items():
        if path not in old:
            lines.append(f"+ {path}: {_show(value)}")
        elif old[path] != value:
            lines.append(f"~ {path}: {_show(old[path])} -> {_show(value)}")
    lines += [f"- {path}: {_show(value)}" for path, value in old.items() if path not in new]
    return lines


def changes(versions: Sequence[JobVersion]) -> list[list[str]]:
    """For each version (oldest first), its :func:`diff` against the one before."""
    ordered = sorted(versions, key=lambda v: v.number)
    return [diff(ordered[i - 1].spec if i else None, v.spec) for i, v in enumerate(ordered)]
