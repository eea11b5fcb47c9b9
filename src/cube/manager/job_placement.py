"""Choosing a node for one allocation of a job: the scheduler's question, asked on pass views.

Used by the applier for real placements and by the dry run (``cube job plan``) on copies
of the views; neither writes anything here. It owns one cache: each group's placement
spec (the group as the scheduler sees it, :func:`cube.job.spec.placement_spec`) and
hash, as a spec never changes and building them was a tenth of a placement's cost.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from functools import reduce
from typing import TYPE_CHECKING

from cube.job.blocked import DATACENTER
from cube.job.model import group_hash
from cube.job.plan import Place
from cube.job.spec import GroupSpec, JobSpec, placement_spec
from cube.manager.allocs import passed_over
from cube.manager.job_records import JobRecords
from cube.manager.pass_views import PassViews
from cube.node import Node
from cube.scheduler import Decision, allocate, release
from cube.task.spec import TaskSpec

if TYPE_CHECKING:
    from cube.manager.core import Manager


class Placer:
    """Where an allocation of a group goes; see the module docstring."""

    def __init__(self, manager: Manager, records: JobRecords) -> None:
        self.manager = manager
        self.records = records
        #: (id of a version's spec, group) -> that spec, the group's placement spec and hash.
        self._requests: dict[tuple[int, str], tuple[JobSpec, TaskSpec, str]] = {}

    def choose(self, spec: JobSpec, place: Place, views: PassViews, *, taken: Set[str]) -> Decision:
        """A node for one allocation of ``place.group``, allocated on ``views`` if found.

        Nodes outside the job's datacenters are out; a system placement names its node;
        otherwise the nodes without a live allocation of the job (``taken``), nor the
        node ``place.avoid``, are tried first, then every node.
        """
        group = spec.group(place.group)
        request = self.request(spec, group)
        scheduler = self.manager.scheduler
        eligible = views.in_datacenters(spec.datacenters)
        if place.node is not None:
            named = place.node in views and views.datacenter(place.node) in spec.datacenters
            eligible = [views[place.node]] if named else []
        if not eligible:
            where = ", ".join(spec.datacenters)
            reason = f"no node in datacenter {where}"
            if place.node is not None:
                reason = f"node {place.node} is not in datacenter {where}"
            outside = len(views) if place.node is None else 1
            return Decision(
                node=None,
                algorithm=scheduler.algorithm,
                reason=reason,
                filtered_counts={DATACENTER: outside} if outside else {},
                total=len(views),
            )
        skip = passed_over(taken, avoid=place.avoid)
        decision = None
        if skip and len(skip) < len(eligible):
            decision = self.manager.telemetry.place(scheduler, request, eligible, skip=skip)
        if decision is None or decision.node is None:
            decision = self.manager.telemetry.place(scheduler, request, eligible)
        if decision.node is not None:
            views.replace(allocate(views[decision.node], request))
        return decision

    def request(self, spec: JobSpec, group: GroupSpec) -> TaskSpec:
        """The group as the scheduler sees it; kept, as a spec never changes (a tenth of
        a placement's cost when built each time)."""
        key = (id(spec), group.name)
        known = self._requests.get(key)
        if known is None or known[0] is not spec:
            known = self._requests[key] = (
                spec,
                placement_spec(spec, group),
                group_hash(spec, group),
            )
        return known[1]

    def hash(self, spec: JobSpec, group: GroupSpec) -> str:
        self.request(spec, group)
        return self._requests[(id(spec), group.name)][2]

    def forget_specs(self) -> None:
        """Drop the cache (built again as needed): a purge forgets versions' specs."""
        self._requests.clear()

    def release(self, alloc_id: str, views: PassViews) -> None:
        """Take off ``views`` what allocation ``alloc_id``'s live tasks hold on its node."""
        self._change(alloc_id, views, release)

    def hold(self, alloc_id: str, views: PassViews) -> None:
        """Put back on ``views`` what :meth:`release` took off (the allocation stays)."""
        self._change(alloc_id, views, allocate)

    def _change(
        self, alloc_id: str, views: PassViews, change: Callable[[Node, TaskSpec], Node]
    ) -> None:
        alloc = self.records.allocs.get(alloc_id)
        if alloc is None or alloc.node is None or alloc.node not in views:
            return
        live = [self.manager.tasks.get(t.id) for t in alloc.tasks.values()]
        specs = [t.spec for t in live if t is not None and not t.is_terminal]
        views.replace(reduce(change, specs, views[alloc.node]))
