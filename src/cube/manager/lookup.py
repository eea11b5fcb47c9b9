"""Which task a user means: ``cube status web``, ``cube stop 1a2``.

Like ``docker``: an exact ID first, then a task's name, then a prefix of an ID. A
prefix of any length is fine while only one ID starts with it. A task of a job's
allocation (``<alloc id>-<task name>``) is also found by the form ``cube status`` shows,
a prefix of its allocation's ID and its name (``1a2b3c4d5e6f-api``). Allocations are
found by their ID or a unique prefix of it, of any length too. Names are not unique
(running ``web`` again after it completed makes a second ``web``), so a name that fits
several tasks means the one of them that is not over yet, if there is exactly one: the
task a user is looking at. Otherwise a name or prefix that fits more than one task is
refused with the candidates, so that the user can pick.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

from cube.errors import Conflict, FieldError, InvalidSpec, NotFound
from cube.job.model import Allocation
from cube.job.spec import JobSpec
from cube.task.model import Task, abbreviates, short_task_id

#: How many candidate IDs an ambiguity error lists.
MAX_CANDIDATES = 10


def find_task(tasks: Mapping[str, Task], ref: str) -> Task:
    """The task ``ref`` names: its ID, its name, or a prefix of its ID.

    Raises :class:`NotFound` when none fits and :class:`Conflict` when several do.
    """
    if (task := tasks.get(ref)) is not None:
        return task
    if not ref:
        raise NotFound("task '' not found")
    named = [t for t in tasks.values() if t.name == ref]
    live = [t for t in named if not t.is_terminal]
    if len(named) == 1 or len(live) == 1:
        return (live or named)[0]
    if named:
        raise Conflict(f"{len(named)} tasks are named {ref!r}: {_candidates(named)}; give an ID")
    prefixed = [t for tid, t in tasks.items() if abbreviates(ref, tid)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise Conflict(
            f"task ID prefix {ref!r} matches {len(prefixed)} tasks: {_candidates(prefixed)};"
            " give more of the ID"
        )
    raise NotFound(f"task {ref} not found (no task has that ID, name or ID prefix)")


def _candidates(tasks: Sequence[Task]) -> str:
    ordered = sorted(tasks, key=lambda t: t.created_at)
    shown = ", ".join(f"{short_task_id(t.id)} ({t.state.value})" for t in ordered[:MAX_CANDIDATES])
    more = len(tasks) - MAX_CANDIDATES
    return shown + (f" and {more} more" if more > 0 else "")


def find_alloc(allocs: Mapping[str, Allocation], ref: str) -> Allocation:
    """The allocation ``ref`` names: its ID or a unique prefix of it (any length).

    Raises :class:`NotFound` when none fits and :class:`Conflict` when several do.
    """
    if (alloc := allocs.get(ref)) is not None:
        return alloc
    prefixed = [a for aid, a in allocs.items() if ref and aid.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        ordered = sorted(prefixed, key=lambda a: a.created_at)
        shown = ", ".join(
            f"{short_task_id(a.id)} ({a.name}, {a.status.value})" for a in ordered[:MAX_CANDIDATES]
        )
        more = len(prefixed) - MAX_CANDIDATES
        raise Conflict(
            f"allocation ID prefix {ref!r} matches {len(prefixed)} allocations: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + "; give more of the ID"
        )
    raise NotFound(f"allocation {ref} not found")


def not_found(kind: str, name: str, known: Iterable[str]) -> NotFound:
    """``job shpo not found; did you mean 'shop'?``: the error for a name nothing has,
    with the known name closest to it when one is close (a typo), as git says it."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return NotFound(f"{kind} {name} not found{hint}")


def no_such_group(spec: JobSpec, group: str) -> InvalidSpec:
    """``group: job shop has no group 'webb' (web)``: a 422 naming the field and the groups
    the job has, the same for every command that takes a group (scale, logs)."""
    known = ", ".join(g.name for g in spec.groups)
    return InvalidSpec([FieldError("group", f"job {spec.job} has no group {group!r} ({known})")])
