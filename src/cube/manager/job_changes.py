"""Which jobs the next job pass looks at: what changed since the last one.

A pass over every job cost O(allocations) however little had changed (each job's
allocations derived and reconciled), and every task change woke it: at 100,000
allocations that is most of the manager's time spent finding nothing to do. The job
service tells a :class:`JobChanges` what happened, as it happens; each pass asks it
for its to-do list (:meth:`JobChanges.todo`), and every job is looked at anyway every
``FULL_PASS`` seconds (see :mod:`cube.manager.job_loop`), for a change nobody reported.

No I/O, and the clock is passed in: tests drive it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cube.node import Node, NodeState


@dataclass(frozen=True)
class Todo:
    """One job of a pass: which allocations to derive (None: all), and whether lazily
    (reconcile only if deriving changed one of them)."""

    derive: set[str] | None
    lazy: bool = False


#: Reconcile the job, deriving every allocation.
EVERYTHING = Todo(None)


class JobChanges:
    """What happened since the last pass (see the module docstring)."""

    def __init__(self, jobs: Iterable[str]) -> None:
        self._dirty: set[str] = set(jobs)  # jobs to reconcile (all of them at start)
        self._changed: dict[str, set[str]] = {}  # job -> allocations whose tasks changed
        self.unfinished: set[str] = set()  # jobs a pass left with placements to make
        self._due: dict[str, datetime] = {}  # job -> when its plan asked to look again
        # node -> (state, drain, labels) as the last pass saw them
        self._nodes: dict[str, tuple[NodeState, bool, dict[str, str]]] = {}
        self._generation = -1  # the manager's capacity generation then

    # --- what happened ------------------------------------------------------------------------
    def job_changed(self, job: str) -> None:
        """Submitted, scaled or stopped: reconcile it."""
        self._dirty.add(job)

    def alloc_changed(self, job: str, alloc: str) -> None:
        """A task of the allocation changed: derive it (and reconcile if that moved it)."""
        self._changed.setdefault(job, set()).add(alloc)

    def due(self, job: str, when: datetime | None) -> None:
        """The job's plan asks to be looked at again at ``when`` (None: not by itself)."""
        if when is None:
            self._due.pop(job, None)
        else:
            self._due[job] = when

    def wake_at(self) -> datetime | None:
        return min(self._due.values(), default=None)

    # --- the next pass ------------------------------------------------------------------------
    def todo(
        self,
        jobs: Iterable[str],
        nodes: Mapping[str, Node],
        now: datetime,
        *,
        full: bool,
        jobs_on: Callable[[str], Iterable[str]],
        system: Callable[[], Iterable[str]],
        blocked: Callable[[], Iterable[str]],
        generation: int,
    ) -> dict[str, Todo]:
        """The jobs this pass reconciles, in the order of ``jobs`` (the oldest first).

        A job is reconciled, deriving every allocation, when it was submitted, scaled or
        stopped; when one of its nodes (``jobs_on``) changed state, drain or labels; when
        its plan's ``wake_at`` is due; and, if a placement of it found no node
        (``blocked``), when the cluster's capacity ``generation`` changed; a ``system``
        job whenever a node changed (or joined). A job with allocations whose tasks
        changed derives those, lazily; a job a pass left with placements to make is
        reconciled again without deriving. ``full``: every job, deriving everything.
        """
        changed, self._changed = self._changed, {}
        dirty, self._dirty = self._dirty, set()
        unfinished, self.unfinished = self.unfinished, set()
        moved = self._nodes_changed(nodes)
        if full:
            return dict.fromkeys(jobs, EVERYTHING)
        if moved:
            for name in moved:
                dirty.update(jobs_on(name))
            dirty.update(system())
        if generation != self._generation:
            self._generation = generation
            dirty.update(blocked())
        dirty.update(job for job, due in self._due.items() if due <= now)
        todo: dict[str, Todo] = {}
        for job in jobs:
            if job in dirty:
                todo[job] = EVERYTHING
            elif job in changed:
                todo[job] = Todo(changed[job], lazy=job not in unfinished)
            elif job in unfinished:
                todo[job] = Todo(set())
        return todo

    def _nodes_changed(self, nodes: Mapping[str, Node]) -> list[str]:
        """Nodes whose state, drain or labels (datacenter, constraints) changed since the
        last pass, or that are gone."""
        seen = self._nodes
        changed = []
        for name, node in nodes.items():
            if seen.get(name) != (node.state, node.drain, node.labels):
                seen[name] = (node.state, node.drain, dict(node.labels))  # a snapshot
                changed.append(name)
        for name in [n for n in seen if n not in nodes]:
            del seen[name]
            changed.append(name)
        return changed
