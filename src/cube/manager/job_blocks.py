"""The groups whose placements found no node, and wait: the applier's memory of them.

A placement that finds no node records nothing (see :mod:`cube.manager.job_applier`).
Its group waits until the cluster's capacity (the dispatcher's ``generation``) or the
job's version changes, instead of each of its placements failing the same way on every
pass, as the task dispatcher's unplaceable tasks wait. A system group's placements are
each for one node: only the nodes that had no room wait, so a small node holds back no
other node's allocation. What is kept per group (how many placements the last plan could
not make, and the scheduler's explanation) is what the job's status and the API show
(:meth:`Blocks.failures`). Nothing of it is stored: the next pass that tries finds it
again. Plain data, the generation passed in: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cube.job.blocked import PlacementFailure, failure_of
from cube.job.plan import Place
from cube.scheduler import Decision


@dataclass
class Blocked:
    """A group whose placement found no node: it waits until the cluster's capacity
    ``generation`` or the job's ``version`` changes."""

    generation: int
    version: int
    decision: Decision
    #: Placements of the group the job's last plan asked for that found no node: the one
    #: tried, and those that waited on it (Nomad's coalesced failures, plus one).
    count: int = 1
    #: A system group's nodes that had no room (its placements are each for one node).
    nodes: set[str] = field(default_factory=set)


class Blocks:
    """(job, group) -> its :class:`Blocked`; see the module docstring."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], Blocked] = {}

    def jobs(self) -> Iterable[str]:
        """The jobs with a group that waits (tried again when the capacity changes)."""
        return (job for job, _ in self._groups)

    def failures(self, job: str) -> dict[str, PlacementFailure]:
        """Group -> the placements of ``job``'s last plan that found no node, and why."""
        return {
            group: failure_of(b.decision, b.count)
            for (j, group), b in self._groups.items()
            if j == job
        }

    def forget(self, job: str) -> None:
        for key in [k for k in self._groups if k[0] == job]:
            del self._groups[key]

    def plan_begins(self, job: str, placing: set[str]) -> None:
        """A new plan of ``job`` places in the groups ``placing``: their placements count
        again; the others place nothing now (scaled down, stopped) and wait no more."""
        for key in [k for k in self._groups if k[0] == job]:
            if key[1] in placing:
                self._groups[key].count = 0
            else:
                del self._groups[key]

    def waits(self, job: str, place: Place, *, version: int, generation: int) -> bool:
        """Whether ``place`` waits: a placement of its group (of its node, for a system
        group) found no node, and neither ``generation`` nor ``version`` changed since
        (counted: one more placement the plan asked that found no node)."""
        blocked = self._current(job, place.group, version, generation)
        if blocked is None or (place.node is not None and place.node not in blocked.nodes):
            return False
        blocked.count += 1
        return True

    def found_no_node(
        self, job: str, place: Place, decision: Decision, *, version: int, generation: int
    ) -> None:
        blocked = self._current(job, place.group, version, generation)
        if blocked is None or place.node is None:
            blocked = Blocked(generation, version, decision)
            self._groups[(job, place.group)] = blocked
        else:
            blocked.count += 1  # another system placement, for a node of its own
        if place.node is not None:
            blocked.nodes.add(place.node)

    def found_a_node(self, job: str, place: Place, *, version: int, generation: int) -> None:
        """A group whose placement found a node waits no more; but a system group's
        other nodes that had no room at this capacity still do."""
        blocked = self._current(job, place.group, version, generation)
        if blocked is not None and place.node is not None:
            blocked.nodes.discard(place.node)
            if blocked.nodes:
                return
        self._groups.pop((job, place.group), None)

    def _current(self, job: str, group: str, version: int, generation: int) -> Blocked | None:
        blocked = self._groups.get((job, group))
        if blocked is None or (blocked.generation, blocked.version) != (generation, version):
            return None
        return blocked
