"""What a job whose placements found no node says of them: Nomad's placement failures.

A placement that finds no node records nothing (no allocation waits in the store without
a node, as none does in Nomad, where the failed placement leaves a blocked evaluation);
the applier keeps, per group, how many placements the last pass could not make and the
scheduler's explanation (:class:`PlacementFailure`). It is derived again by the next
pass that tries, so a restarted manager knows it again after one pass. The pure pieces
here turn it into what every reader shows (:func:`blocked_groups`): how many of each group
wait for a node, the job's status line (:func:`blocked_status`), and ``nomad job
status``'s Placement Failure lines (:meth:`BlockedGroup.lines`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field

from cube.job.holders import is_holder
from cube.job.model import Allocation, JobStatus
from cube.job.spec import JobSpec, JobType
from cube.scheduler import Decision

#: The filter named when no node is in the job's datacenters (the placer's own, before the
#: scheduler's checkers: Nomad counts these nodes as not "available in datacenter").
DATACENTER = "datacenter"


class PlacementFailure(BaseModel):
    """A group's placements that the last pass could not make, and why."""

    count: int = Field(
        description="placements that found no node: the one tried, and those that waited on it"
    )
    reason: str = Field(description="the scheduler's line: why no node fits")
    filtered: dict[str, int] = Field(
        default_factory=dict, description="filter -> nodes it stopped, most first"
    )
    examined: int = Field(default=0, description="nodes looked at")
    total: int = Field(default=0, description="nodes in the cluster")


def failure_of(decision: Decision, count: int = 1) -> PlacementFailure:
    """The failure a decision that found no node says (``count`` placements alike)."""
    return PlacementFailure(
        count=count,
        reason=decision.reason,
        filtered=dict(decision.filtered_counts),
        examined=decision.examined,
        total=decision.total,
    )


def failures_of(decisions: Iterable[tuple[str, Decision]]) -> dict[str, PlacementFailure]:
    """Group -> its placements that found no node, of (group, decision) pairs (a dry
    run's), said by the first of them: ``cube job plan``'s placement failures."""
    found: dict[str, PlacementFailure] = {}
    for group, decision in decisions:
        if decision.node is not None:
            continue
        known = found.get(group)
        found[group] = (
            failure_of(decision)
            if known is None
            else known.model_copy(update={"count": known.count + 1})
        )
    return found


@dataclass(frozen=True)
class BlockedGroup:
    """One group's placement failure as every reader shows it."""

    name: str
    #: How many of the group wait for a node (see :func:`blocked_groups`).
    waiting: int
    wanted: int | None  # None: a system group (one per eligible node)
    failure: PlacementFailure

    @property
    def line(self) -> str:
        """``web: 5 of 5 not placed: no node in datacenter dc1``."""
        of = "" if self.wanted is None else f" of {self.wanted}"
        return f"{self.name}: {self.waiting}{of} not placed: {self.failure.reason}"

    @property
    def filtered_line(self) -> str:
        """:attr:`line` with the filters that stopped nodes:
        ``web: 2 of 2 not placed: ... (filtered: cpu 3 nodes, ports 1 node)``."""
        filters = ", ".join(
            f"{name} {n} node{'' if n == 1 else 's'}" for name, n in self.failure.filtered.items()
        )
        return f"{self.line} (filtered: {filters})" if filters else self.line

    def lines(self) -> list[str]:
        """``nomad job status``'s Placement Failure lines: the reason, then each filter
        with the nodes it stopped (``* Filter "cpu": 3 nodes``)."""
        lines = [self.failure.reason]
        for name, n in self.failure.filtered.items():
            lines.append(f'* Filter "{name}": {n} node{"" if n == 1 else "s"}')
        return lines


def blocked_groups(
    spec: JobSpec, allocs: Iterable[Allocation], failures: Mapping[str, PlacementFailure]
) -> list[BlockedGroup]:
    """The groups of ``spec`` with a placement failure, in the spec's order.

    How many wait: the group's count less the slots held, or the placements that failed,
    if more (replacements of a new version that found no node, while the old allocations
    go on holding their slots). A system group has no count: the placements that failed.
    """
    holders = Counter(a.group for a in allocs if is_holder(a))
    found = []
    for group in spec.groups:
        failure = failures.get(group.name)
        if failure is None:
            continue
        if spec.type is JobType.SYSTEM:
            found.append(BlockedGroup(group.name, failure.count, None, failure))
            continue
        waiting = max(group.wanted - holders[group.name], failure.count)
        found.append(BlockedGroup(group.name, waiting, group.wanted, failure))
    return found


def blocked_status(
    spec: JobSpec,
    status: JobStatus,
    reason: str,
    allocs: Iterable[Allocation],
    failures: Mapping[str, PlacementFailure],
) -> tuple[JobStatus, str]:
    """The job's status and reason once some of its placements found no node.

    As Nomad says of a blocked evaluation, the job says so, with how many of each group
    are not placed and why, instead of "no allocation runs yet":
    ``blocked: web: 5 of 5 not placed: no node in datacenter dc1``. A job that is not
    Pending or Running (stopped, complete, failed) keeps its status and reason.
    """
    if status not in (JobStatus.PENDING, JobStatus.RUNNING):
        return status, reason
    groups = blocked_groups(spec, allocs, failures)
    if not groups:
        return status, reason
    blocked = "blocked: " + "; ".join(g.line for g in groups)
    if status is JobStatus.RUNNING:
        return status, f"{reason}; {blocked}"
    return JobStatus.PENDING, blocked
