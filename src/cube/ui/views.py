"""What the dashboard's pages show, computed from the manager's records: pure functions.

Templates only lay these out; every count, fraction and ordering is decided here, where a
unit test can check it without a browser.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from cube.job.model import Allocation, AllocStatus, Job
from cube.job.spec import JobSpec
from cube.job.summary import group_summaries
from cube.node import Node, NodeState
from cube.scheduler import Decision
from cube.task.model import Task, TaskEvent
from cube.task.state import State
from cube.units import format_duration, format_size


@dataclass(frozen=True)
class Count:
    label: str
    count: int


def counts(values: Iterable[StrEnum], order: Iterable[StrEnum]) -> list[Count]:
    """How many of each value, in ``order``; the ones with none are left out."""
    seen = Counter(values)
    return [Count(v.value, seen[v]) for v in order if seen[v]]


def nodes_by_state(nodes: Iterable[Node]) -> list[Count]:
    return counts((n.state for n in nodes), NodeState)


def tasks_by_state(tasks: Iterable[Task]) -> list[Count]:
    return counts((t.state for t in tasks), State)


def allocs_by_status(allocs: Iterable[Allocation]) -> list[Count]:
    return counts((a.status for a in allocs), AllocStatus)


@dataclass(frozen=True)
class Bar:
    """One resource of a node: capacity, what its tasks requested, what the machine used."""

    label: str
    capacity: float
    allocated: float
    used: float | None
    text: str

    @property
    def allocated_percent(self) -> float:
        return _percent(self.allocated, self.capacity)

    @property
    def used_percent(self) -> float | None:
        return None if self.used is None else _percent(self.used, self.capacity)


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return round(min(max(part / whole, 0.0), 1.0) * 100, 1)


def cores(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def _cores_text(value: float) -> str:
    return f"{cores(value)} core{'' if value == 1 else 's'}"


def node_bars(node: Node) -> list[Bar]:
    """CPU, memory and disk of ``node``: allocated and used against capacity."""
    stats = node.stats
    cpu_used = mem_used = disk_used = None
    if stats is not None:
        cpu_used = stats.cpu_percent / 100 * stats.cpu_count
        mem_used = float(stats.memory_total - stats.memory_available)
        disk_used = float(stats.disk_total - stats.disk_free)
    cap, alloc = node.capacity, node.allocated
    return [
        _bar("CPU", cap.cpu, alloc.cpu, cpu_used, _cores_text),
        _bar("Memory", cap.memory, alloc.memory, mem_used, lambda v: format_size(int(v))),
        _bar("Disk", cap.disk, alloc.disk, disk_used, lambda v: format_size(int(v))),
    ]


def _bar(label: str, capacity: float, allocated: float, used: float | None, fmt: Any) -> Bar:
    text = f"{fmt(allocated)} allocated of {fmt(capacity)}"
    if used is not None:
        text += f"; {fmt(used)} used on the machine"
    return Bar(label, capacity, allocated, used, text)


def placement(raw: dict[str, Any] | None) -> Decision | None:
    """The scheduler's explanation kept on a task or allocation, if it reads as one."""
    if raw is None:
        return None
    try:
        return Decision.model_validate(raw)
    except ValidationError:
        return None


@dataclass(frozen=True)
class RecentEvent:
    task: Task
    event: TaskEvent


async def recent_events(
    tasks: Iterable[Task],
    history: Callable[[str], Awaitable[Sequence[TaskEvent]]],
    *,
    tasks_looked_at: int = 10,
    limit: int = 15,
) -> list[RecentEvent]:
    """The latest events of the cluster: those of the ``tasks_looked_at`` tasks that
    changed last (``await history(task_id)`` gives a task's events, read from the store
    off the loop), newest first. ``tasks`` is read once, before the first ``await``."""
    latest = heapq.nlargest(tasks_looked_at, tasks, key=lambda t: t.updated_at)
    found = [RecentEvent(t, e) for t in latest for e in await history(t.id)]
    found.sort(key=lambda r: r.event.time, reverse=True)
    return found[:limit]


@dataclass(frozen=True)
class GroupRow:
    """One group of a job, as ``cube job status JOB`` shows it (its Groups table)."""

    name: str
    desired: str  # "3", "one per node", "0 (stopped; count 3)"
    queued: int | None  # None for a system job: no count to wait for
    statuses: list[Count]
    stopped: bool = False

    @property
    def line(self) -> str:
        """The group in a sentence, for the job list: ``web: 1 running, 2 queued of 3``;
        a stopped job's: ``web: 3 complete; desired 0 (stopped; count 3)``."""
        parts = [f"{c.count} {c.label}" for c in self.statuses]
        if self.queued:
            parts.append(f"{self.queued} queued")
        text = f"{self.name}: {', '.join(parts) or 'none'}"
        if self.stopped:
            return f"{text}; desired {self.desired}"
        return text if self.queued is None else f"{text} of {self.desired}"


def job_groups(job: Job, spec: JobSpec, allocs: Iterable[Allocation]) -> list[GroupRow]:
    """Each group of the job's current spec: what it wants, what waits for an allocation,
    and its allocations by status, read as the CLI reads them
    (:func:`cube.job.summary.group_summaries`: a stopped job wants 0, its counts are what the
    stop ended)."""
    rows = []
    for g in group_summaries(job, spec, allocs):
        desired = "one per node" if g.count is None and not g.stopped else g.desired
        statuses = [Count(s.value, g.statuses[s]) for s in AllocStatus if g.statuses[s]]
        rows.append(GroupRow(g.name, desired, g.queued, statuses, stopped=g.stopped))
    return rows


def jobs_by_status(jobs: Iterable[Job]) -> list[Count]:
    seen = Counter(j.status.value for j in jobs)
    return [Count(label, n) for label, n in sorted(seen.items())]


@dataclass(frozen=True)
class Slot:
    """One task in a node's topology strip: its share of one of the node's resources."""

    task: Task
    x: float  # percent from the left
    width: float  # percent of the strip


@dataclass(frozen=True)
class Strip:
    label: str  # "Memory", "CPU"
    slots: list[Slot]
    text: str = ""  # "640MiB of 23.5GiB allocated"


def strip(
    label: str, capacity: float, tasks: Sequence[Task], amount: Callable[[Task], float]
) -> Strip:
    """``tasks`` side by side, each as wide as the ``amount`` of the resource it requested
    is a share of ``capacity`` (at least 1%, to be seen)."""
    slots: list[Slot] = []
    x = 0.0
    for task in tasks:
        share = amount(task) / capacity * 100 if capacity > 0 else 0.0
        width = round(min(max(share, 1.0), 100.0 - x), 2)
        if width <= 0:
            break
        slots.append(Slot(task, round(x, 2), width))
        x += width
    return Strip(label, slots)


def newest(tasks: Iterable[Task], n: int) -> list[Task]:
    """The ``n`` tasks created last, newest first: one pass keeping ``n`` (heapq), not a
    sort of every task of the cluster (100,000 of them, for a page of 500)."""
    return heapq.nlargest(n, tasks, key=lambda t: t.created_at)


def live_tasks(tasks: Iterable[Task]) -> list[Task]:
    """The tasks that hold resources (not ended), those of one allocation together."""
    live = [t for t in tasks if not t.is_terminal]
    return sorted(live, key=lambda t: (t.alloc.id if t.alloc else "", t.id))


def node_strips(node: Node, tasks: Sequence[Task]) -> list[Strip]:
    """The topology of one node: its live tasks' shares of its memory and of its CPU."""
    cap, alloc = node.capacity, node.allocated
    memory = strip("Memory", cap.memory, tasks, lambda t: t.spec.resources.memory)
    cpu = strip("CPU", cap.cpu, tasks, lambda t: t.spec.resources.cpu)
    return [
        Strip(
            memory.label,
            memory.slots,
            f"{format_size(alloc.memory)} of {format_size(cap.memory)} allocated",
        ),
        Strip(cpu.label, cpu.slots, f"{_cores_text(alloc.cpu)} of {cores(cap.cpu)} allocated"),
    ]


def ago(when: datetime | None, now: datetime) -> str:
    """``'45s ago'``; ``'-'`` for never."""
    if when is None:
        return "-"
    return f"{format_duration(max((now - when).total_seconds(), 0.0))} ago"
