"""A reconciler's answer: what to place, stop, update, keep or wait for, each with a reason.

The reconciler (:mod:`cube.job.reconcile`) writes a :class:`Plan` and does nothing else;
an applier turns it into I/O, and ``cube job plan`` prints it (:meth:`Plan.describe`)
without applying it. Entries name allocations by ID and slots by group and index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cube.job.model import JobStatus, RescheduleEvent


@dataclass(frozen=True)
class Place:
    """Create an allocation for slot ``index`` of ``group`` (on ``node`` if given)."""

    group: str
    index: int
    reason: str
    #: The allocation this one replaces; the applier sets that one's ``replaced_by``.
    replaces: str | None = None
    #: System groups: the node it must run on. Others: None, the scheduler picks.
    node: str | None = None
    #: A node to avoid if another fits: where the allocation it replaces failed.
    avoid: str | None = None
    #: The new allocation's reschedule history (its predecessor's, plus this replacement).
    reschedule_events: tuple[RescheduleEvent, ...] = ()
    #: A canary of the deployment: started beside the old allocations, holding no slot.
    canary: bool = False


@dataclass(frozen=True)
class Stop:
    """Stop an allocation (``desired: stop``); ``lost``: also record its status as Lost."""

    alloc: str
    reason: str
    lost: bool = False


@dataclass(frozen=True)
class Update:
    """Destructive update: stop ``alloc``, then start slot ``index`` on the current version."""

    alloc: str
    group: str
    index: int
    reason: str
    node: str | None = None  # system groups: the new allocation stays on this node
    #: start-first: the old one keeps running until its successor is healthy.
    start_first: bool = False


@dataclass(frozen=True)
class Reclaim:
    """A superseded allocation of the current version takes its slot back (a revert).

    It never stopped (start-first keeps the old one until its successor is healthy);
    ``stop``, the successor that holds the slot now, is stopped instead.
    """

    alloc: str
    reason: str
    stop: str | None = None


@dataclass(frozen=True)
class Promote:
    """A promoted canary takes its slot over from ``replaces`` (stopped once it is healthy)."""

    alloc: str
    reason: str
    replaces: str | None = None


@dataclass(frozen=True)
class InPlace:
    """Move ``alloc`` to the current version without touching its containers."""

    alloc: str
    reason: str


@dataclass(frozen=True)
class Keep:
    """Leave ``alloc`` as it is."""

    alloc: str
    reason: str


@dataclass(frozen=True)
class Wait:
    """Something to place later: at ``due`` (a reschedule delay), or when a slot frees."""

    group: str
    index: int
    reason: str
    alloc: str | None = None  # the allocation waiting to be replaced, if any
    due: datetime | None = None


@dataclass
class Plan:
    """What the applier must do for one job; every entry says why."""

    job: str
    version: int
    place: list[Place] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
    update: list[Update] = field(default_factory=list)
    in_place: list[InPlace] = field(default_factory=list)
    keep: list[Keep] = field(default_factory=list)
    wait: list[Wait] = field(default_factory=list)
    reclaim: list[Reclaim] = field(default_factory=list)
    promote: list[Promote] = field(default_factory=list)
    status: JobStatus = JobStatus.PENDING
    status_reason: str = ""

    @property
    def replacements(self) -> list[Place]:
        """The placements that replace an allocation (lost, drained, failed)."""
        return [p for p in self.place if p.replaces is not None]

    @property
    def wake_at(self) -> datetime | None:
        """When to reconcile again even if nothing changes: the first reschedule due."""
        dues = [w.due for w in self.wait if w.due is not None]
        return min(dues) if dues else None

    @property
    def changes_nothing(self) -> bool:
        return not (
            self.place or self.stop or self.update or self.in_place or self.reclaim or self.promote
        )

    def describe(self) -> list[str]:
        """One line per entry, as ``cube job plan`` would print them."""
        lines = [f"job {self.job} version {self.version}: {self.status.title}"]
        lines += [f"place   {p.group}[{p.index}]: {p.reason}" for p in self.place]
        lines += [f"stop    {s.alloc}: {s.reason}" for s in self.stop]
        lines += [f"update  {u.alloc}: {u.reason}" for u in self.update]
        lines += [f"inplace {i.alloc}: {i.reason}" for i in self.in_place]
        lines += [f"reclaim {r.alloc}: {r.reason}" for r in self.reclaim]
        lines += [f"promote {p.alloc}: {p.reason}" for p in self.promote]
        lines += [f"wait    {w.group}[{w.index}]: {w.reason}" for w in self.wait]
        lines += [f"keep    {k.alloc}: {k.reason}" for k in self.keep]
        return lines
