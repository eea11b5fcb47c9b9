"""The rolling part of the reconciler: which allocations a deployment replaces next.

Pure, called by :func:`cube.job.reconcile.reconcile` for each service or system group;
it reads the group's allocations, its update policy and the job's deployment, and
writes to the plan.

* **Budget.** At most ``max_parallel`` replacements are in flight: a replacement is in
  flight until the deployment judges it healthy (without a deployment, a batch job's:
  until it runs); with stop-first, an old allocation still stopping is in flight too.
* **Order.** stop-first: stop the old allocation, then start its replacement (an
  :class:`~cube.job.plan.Update`). start-first: start the replacement beside it; the old
  one, *superseded*, keeps running until the holder of its slot is healthy, then stops.
* **Never drop the last good version.** A superseded allocation whose spec is the
  current one again (a revert) takes its slot back (:class:`~cube.job.plan.Reclaim`),
  and its successor is the one stopped. Nothing is replaced while the deployment is not
  running (failed, rolled back): what runs stays.
* **Canaries.** Until promoted, a group with ``canary: N`` gets N allocations of the new
  version beside the old ones, holding no slot; the old ones wait. Promoted, each canary
  takes over the slot of its index (:class:`~cube.job.plan.Promote`). Canaries of a
  deployment that is over, or not the job's current one, stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cube.job.deployment import Deployment, DeploymentStatus, GroupDeployment
from cube.job.model import Allocation, AllocDesired, AllocStatus
from cube.job.plan import Keep, Place, Plan, Promote, Reclaim, Stop
from cube.job.spec import UpdateOrder, UpdatePolicy
from cube.node import NodeState


@dataclass(frozen=True)
class Rollout:
    """What one group's pass knows of the deployment."""

    name: str  # the group's
    policy: UpdatePolicy
    deployment: Deployment | None
    hash: str  # the current version's group hash

    @property
    def group(self) -> GroupDeployment | None:
        return None if self.deployment is None else self.deployment.groups.get(self.name)

    @property
    def may_replace(self) -> bool:
        """Whether old allocations may be replaced now: no deployment (batch), or it runs
        (not paused) and has no canaries waiting for promotion."""
        d = self.deployment
        if d is None:
            return True
        g = self.group
        moving = d.status in (DeploymentStatus.RUNNING, DeploymentStatus.WAITING)
        return moving and (g is None or g.promoted)

    @property
    def start_first(self) -> bool:
        return self.policy.order is UpdateOrder.START_FIRST

    def held_up(self, version: int) -> str:
        """Why an old allocation is not replaced now."""
        d = self.deployment
        if d is not None and not d.active:
            return f"not updated to version {version}: its deployment {d.status.title.lower()}"
        if d is not None and d.status is DeploymentStatus.PAUSED:
            return f"waits to be updated to version {version}: the deployment is paused"
        if d is not None and self.group is not None and not self.group.promoted:
            return f"waits for the canaries of version {version} to be promoted"
        n = self.policy.max_parallel
        return f"waits to be updated to version {version}: {'one' if n == 1 else n} at a time"


def budget(rollout: Rollout, allocs: Sequence[Allocation], nodes: Mapping[str, object]) -> int:
    """How many replacements may start now: ``max_parallel`` minus those in flight."""
    in_flight = 0
    for a in allocs:
        if (
            not rollout.start_first
            and a.desired is AllocDesired.STOP
            and not a.is_terminal
            and a.group_hash != rollout.hash
        ):
            # An old one stopping (stop-first): its slot is empty until it has stopped and
            # its replacement is healthy. (start-first stops an old one once the holder of
            # its slot is healthy: waiting for the stop would only delay the next batch.)
            # On a node that is down or gone it will never be reported stopped: waiting
            # for it would hold the update up forever.
            node = nodes.get(a.node) if a.node is not None else None
            in_flight += node is not None and getattr(node, "state", None) is not NodeState.DOWN
        elif (
            a.desired is AllocDesired.RUN
            and a.replaced_by is None
            and a.replaces is not None
            and a.group_hash == rollout.hash
            and not a.is_terminal
            and _settling(rollout, a)
        ):
            in_flight += 1
    return max(0, rollout.policy.max_parallel - in_flight)


def _settling(rollout: Rollout, alloc: Allocation) -> bool:
    """Whether a replacement is still on its way: not healthy yet (batch: not running)."""
    if rollout.deployment is None:
        return alloc.status is AllocStatus.PENDING
    return alloc.healthy is not True


def superseded(
    rollout: Rollout,
    allocs: Sequence[Allocation],
    holders: Mapping[int | str, Allocation],
    wanted: int,
    plan: Plan,
    nodes: Mapping[str, object],
) -> set[int]:
    """Decide each superseded allocation still running; returns the slots reclaimed."""
    reclaimed: set[int] = set()
    for a in sorted(allocs, key=lambda a: a.created_at, reverse=True):
        if a.desired is not AllocDesired.RUN or a.replaced_by is None or a.is_terminal:
            continue
        holder = holders.get(a.index)
        node = nodes.get(a.node) if a.node is not None else None
        if a.node is not None and getattr(node, "state", NodeState.DOWN) is NodeState.DOWN:
            # Its node is down or gone: it serves nobody, and its successor holds the slot.
            why = f"node {a.node} is {'down' if node is not None else 'gone'}"
            plan.stop.append(Stop(a.id, why, lost=True))
        elif a.index >= wanted:
            plan.stop.append(Stop(a.id, f"{a.group} was scaled to {wanted}"))
        elif (
            a.group_hash == rollout.hash
            and a.index not in reclaimed
            and (holder is None or holder.group_hash != rollout.hash)
        ):
            reclaimed.add(a.index)
            what = f"{holder.name} ({holder.id[:8]})" if holder is not None else "none"
            plan.reclaim.append(
                Reclaim(
                    a.id,
                    f"runs the current version: takes its slot back from {what}",
                    stop=holder.id if holder is not None else None,
                )
            )
        elif holder is not None and holder.group_hash == rollout.hash and holder.healthy is True:
            plan.stop.append(Stop(a.id, f"its replacement {holder.id[:8]} is healthy"))
        else:
            plan.keep.append(Keep(a.id, "runs until its replacement is healthy"))
    return reclaimed


def canaries(
    rollout: Rollout,
    group: str,
    allocs: Sequence[Allocation],
    holders: Mapping[int | str, Allocation],
    plan: Plan,
) -> set[int]:
    """Place the canaries a deployment still needs; promote or stop the others.

    Returns the slots a promoted canary takes over (their holder is not updated).
    """
    d, g = rollout.deployment, rollout.group
    live = [a for a in allocs if a.canary and a.desired is AllocDesired.RUN and not a.is_terminal]
    if d is None or g is None or not d.active:
        for a in live:
            why = "its deployment is over" if d is not None else "no deployment runs"
            if d is not None and a.deployment == d.id:
                why = f"its deployment {d.status.title.lower()}"
            plan.stop.append(Stop(a.id, f"canary stopped: {why}"))
        return set()
    taken: set[int] = set()
    for a in live:
        if a.deployment != d.id:
            plan.stop.append(Stop(a.id, "canary of an earlier version"))
        elif g.promoted:
            old = holders.get(a.index)
            if old is not None and old.group_hash == rollout.hash:
                plan.stop.append(Stop(a.id, "promoted, but its slot runs the version already"))
            else:
                taken.add(a.index)
                plan.promote.append(
                    Promote(a.id, "promoted", replaces=old.id if old is not None else None)
                )
    if g.promoted or d.status is DeploymentStatus.PAUSED:
        return taken
    mine = {a.index for a in allocs if a.canary and a.deployment == d.id}
    for index in range(g.desired_canaries):
        if index not in mine:
            plan.place.append(
                Place(
                    group,
                    index,
                    f"canary {index + 1} of {g.desired_canaries} of version {d.version}",
                    canary=True,
                )
            )
    return taken
