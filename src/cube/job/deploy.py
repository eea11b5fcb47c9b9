"""Pure decisions of a deployment: allocation health, the deployment's status, the revert.

The manager calls these with its records and the clock, and saves what they return;
the rolling itself (which allocations to replace next) is the reconciler's
(:mod:`cube.job.rollout`, called from :func:`cube.job.reconcile.reconcile`).

* :func:`is_ready`: every task of the allocation runs and passes its health check (a task
  without a check: runs).
* :func:`judge_health`: the allocation's deployment verdict. Healthy once ready for
  ``min_healthy_time`` without a break; unhealthy once it failed, or when
  ``healthy_deadline`` after its placement it is not healthy. A verdict stays.
* :func:`new_deployment`, :func:`step`: a deployment's counts and status at ``now``.
* :func:`revert_target`: the version an automatic revert goes back to: the newest older
  one whose deployment succeeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cube.errors import Conflict
from cube.job.deployment import Deployment, DeploymentStatus, GroupDeployment
from cube.job.eligibility import NodeView, ineligibility
from cube.job.model import Allocation, AllocDesired, AllocStatus, JobVersion, group_hash
from cube.job.spec import JobSpec, JobType, UpdatePolicy, update_policy
from cube.task.model import Health, Task
from cube.task.state import State


def _seconds(value: float) -> str:
    return f"{value:g}s"


# --- allocation health ---------------------------------------------------------------------


def is_ready(alloc: Allocation, tasks: Mapping[str, Task | None]) -> bool:
    """Whether every task of ``alloc`` (name -> the manager's record) runs and is healthy."""
    if alloc.desired is not AllocDesired.RUN or alloc.status is not AllocStatus.RUNNING:
        return False
    present = list(tasks.values())
    return bool(present) and all(
        t is not None
        and t.state is State.RUNNING
        and (t.spec.health is None or t.health is Health.HEALTHY)
        for t in present
    )


@dataclass(frozen=True)
class HealthMark:
    """What :func:`judge_health` says to record on the allocation."""

    ready_since: datetime | None
    healthy: bool | None


def judge_health(alloc: Allocation, ready: bool, policy: UpdatePolicy, now: datetime) -> HealthMark:
    """The allocation's readiness and verdict at ``now`` (see the module docstring)."""
    since = (alloc.ready_since or now) if ready else None
    if alloc.healthy is not None:
        return HealthMark(since, alloc.healthy)
    if alloc.status is AllocStatus.FAILED:
        return HealthMark(since, False)
    if since is not None and now - since >= timedelta(seconds=policy.min_healthy_time):
        return HealthMark(since, True)
    if now - alloc.created_at >= timedelta(seconds=policy.healthy_deadline):
        return HealthMark(since, False)
    return HealthMark(since, None)


def health_due(alloc: Allocation, policy: UpdatePolicy) -> datetime | None:
    """When :func:`judge_health` may say something new without any other change."""
    if alloc.healthy is not None or alloc.is_terminal:
        return None
    due = alloc.created_at + timedelta(seconds=policy.healthy_deadline)
    if alloc.ready_since is not None:
        due = min(due, alloc.ready_since + timedelta(seconds=policy.min_healthy_time))
    return due


# --- deployments ---------------------------------------------------------------------------


def _holds(alloc: Allocation) -> bool:
    return alloc.desired is AllocDesired.RUN and alloc.replaced_by is None and not alloc.canary


def _desired(
    spec: JobSpec,
    group_name: str,
    allocs: Sequence[Allocation],
    nodes: Mapping[str, NodeView] | None = None,
) -> int:
    """Allocations the group wants. A system group: one on each node that holds one, and
    one on each eligible node that does not yet (the reconciler places those in the same
    pass, after the deployment was looked at): counting only the allocations would make
    a system job's first deployment "all 0 allocations healthy" before any was placed."""
    if spec.type is JobType.SYSTEM:
        group = spec.group(group_name)
        held = {
            a.node or a.id
            for a in allocs
            if a.group == group_name and _holds(a) and not a.is_terminal
        }
        eligible = {n.name for n in (nodes or {}).values() if ineligibility(n, spec, group) is None}
        return len(held | eligible)
    return spec.group(group_name).wanted


def new_deployment(
    version: JobVersion,
    allocs: Iterable[Allocation],
    *,
    from_version: int | None,
    revert: bool,
    now: datetime,
) -> Deployment:
    """The deployment of ``version`` over the job's allocations as they are.

    A group gets canaries only when it has allocations to replace (a changed spec) and
    the deployment is not a revert: going back to a good version is never put on trial.
    """
    spec = version.spec
    mine = list(allocs)
    groups: dict[str, GroupDeployment] = {}
    for group in spec.groups:
        wanted = group_hash(spec, group)
        replaces = any(
            a.group == group.name and _holds(a) and not a.is_terminal and a.group_hash != wanted
            for a in mine
        )
        canaries = update_policy(spec, group).canary if replaces and not revert else 0
        groups[group.name] = GroupDeployment(
            desired=_desired(spec, group.name, mine),
            desired_canaries=canaries,
            promoted=canaries == 0,
        )
    return Deployment(
        job=version.job,
        version=version.number,
        from_version=from_version,
        revert=revert,
        groups=groups,
        status_reason="reverting" if revert else "rolling out",
        created_at=now,
        updated_at=now,
        progress_at=now,
    )


def _finish(d: Deployment, status: DeploymentStatus, reason: str, now: datetime) -> Deployment:
    d.status, d.status_reason, d.updated_at = status, reason, now
    if not status.active:
        d.finished_at = now
    return d


def step(
    deployment: Deployment,
    spec: JobSpec,
    allocs: Iterable[Allocation],
    now: datetime,
    nodes: Mapping[str, NodeView] | None = None,
) -> Deployment:
    """``deployment`` brought up to ``now``: its counts, its status and why (a copy).

    ``nodes``: the cluster's, which a system job's deployment needs (one allocation per
    eligible node is wanted). Equal to ``deployment`` when nothing changed, so that the
    caller saves only changes.
    """
    d = _step(deployment, spec, allocs, now, nodes)
    if d.model_copy(update={"updated_at": deployment.updated_at}) == deployment:
        return deployment
    return d


def _step(
    deployment: Deployment,
    spec: JobSpec,
    allocs: Iterable[Allocation],
    now: datetime,
    nodes: Mapping[str, NodeView] | None,
) -> Deployment:
    d = deployment.model_copy(deep=True)
    if not d.active:
        return d
    mine = [a for a in allocs if a.job == d.job]
    healthy_before = sum(g.healthy for g in d.groups.values())
    done = True
    for group in spec.groups:
        g = d.groups.setdefault(group.name, GroupDeployment(promoted=True))
        wanted = group_hash(spec, group)
        own = [a for a in mine if a.group == group.name]
        current = [a for a in own if _holds(a) and a.group_hash == wanted and not a.is_terminal]
        g.desired = _desired(spec, group.name, mine, nodes)
        g.placed = len(current)
        g.healthy = sum(1 for a in current if a.healthy is True)
        g.unhealthy = sum(1 for a in own if a.deployment == d.id and a.healthy is False)
        g.canaries = [a.id for a in own if a.canary and a.deployment == d.id]
        leftovers = any(a.group_hash != wanted and not a.is_terminal for a in own)
        ready = sum(1 for a in current if a.healthy is True and a.status is AllocStatus.RUNNING)
        if ready < g.desired or len(current) != g.desired or leftovers or not g.promoted:
            done = False
    for a in mine:
        if a.deployment == d.id and a.healthy is False:
            return _finish(d, DeploymentStatus.FAILED, _unhealthy(a, spec), now)
    healthy_now = sum(g.healthy for g in d.groups.values())
    if healthy_now > healthy_before:
        d.progress_at = now
    if d.status is DeploymentStatus.PAUSED:
        return d  # counted, but no deadline runs and nothing moves on until resumed
    if done:
        return _finish(d, DeploymentStatus.SUCCESSFUL, _success(d), now)
    waiting = [g for g in d.groups.values() if g.desired_canaries and not g.promoted]
    if waiting and all(
        sum(1 for a in mine if a.id in g.canaries and a.healthy is True) >= g.desired_canaries
        for g in waiting
    ):
        # Waiting for a person is not a lack of progress: no deadline runs meanwhile (and
        # promote starts progress_deadline again).
        count = sum(g.desired_canaries for g in waiting)
        what = "canary is" if count == 1 else f"{count} canaries are"
        reason = (
            f"the {what} healthy: cube job promote {d.job} to roll on,"
            f" cube job fail {d.job} to go back"
        )
        d.status, d.status_reason, d.updated_at = DeploymentStatus.WAITING, reason, now
        return d
    deadline = min(update_policy(spec, g).progress_deadline for g in spec.groups)
    if now - d.progress_at >= timedelta(seconds=deadline):
        return _finish(
            d,
            DeploymentStatus.FAILED,
            f"no allocation became healthy within progress_deadline {_seconds(deadline)}"
            f" ({healthy_now} of {sum(g.desired for g in d.groups.values())} healthy)",
            now,
        )
    d.status, d.updated_at = DeploymentStatus.RUNNING, now
    d.status_reason = "; ".join(
        f"{name}: {g.healthy} of {g.desired} healthy"
        + (f", {len(g.canaries)} of {g.desired_canaries} canaries" if not g.promoted else "")
        for name, g in d.groups.items()
    )
    return d


def _unhealthy(alloc: Allocation, spec: JobSpec) -> str:
    if alloc.status is AllocStatus.FAILED:
        return f"{alloc.name} failed" + (f": {alloc.status_reason}" if alloc.status_reason else "")
    deadline = update_policy(spec, spec.group(alloc.group)).healthy_deadline
    return f"{alloc.name} was not healthy within healthy_deadline {_seconds(deadline)}"


def _success(d: Deployment) -> str:
    total = sum(g.desired for g in d.groups.values())
    every = "the allocation" if total == 1 else f"all {total} allocations"
    return f"{every} of version {d.version} healthy"


def promote(deployment: Deployment, now: datetime) -> Deployment:
    """The deployment with its canaries promoted; Conflict unless they are all healthy."""
    if deployment.status is not DeploymentStatus.WAITING:
        if not deployment.waiting_canaries:
            raise Conflict(f"deployment of version {deployment.version} has no canary to promote")
        raise Conflict(
            f"the canaries of version {deployment.version} are not all healthy yet:"
            f" {deployment.status_reason}"
        )
    d = deployment.model_copy(deep=True)
    for g in d.groups.values():
        g.promoted = True
    d.status, d.status_reason, d.updated_at = DeploymentStatus.RUNNING, "promoted", now
    d.progress_at = now
    return d


def pause(deployment: Deployment, now: datetime) -> Deployment:
    """The deployment paused: nothing more is replaced; Conflict unless it is running."""
    if deployment.status is not DeploymentStatus.RUNNING:
        raise Conflict(
            f"deployment of version {deployment.version} is"
            f" {deployment.status.title.lower()}: only a running one can be paused"
        )
    d = deployment.model_copy(deep=True)
    d.status, d.status_reason, d.updated_at = DeploymentStatus.PAUSED, "paused by hand", now
    return d


def resume(deployment: Deployment, now: datetime) -> Deployment:
    """A paused deployment running again; progress_deadline counts from now."""
    if deployment.status is not DeploymentStatus.PAUSED:
        raise Conflict(f"deployment of version {deployment.version} is not paused")
    d = deployment.model_copy(deep=True)
    d.status, d.status_reason, d.updated_at = DeploymentStatus.RUNNING, "resumed", now
    d.progress_at = now
    return d


def fail(deployment: Deployment, reason: str, now: datetime) -> Deployment:
    """The deployment failed by hand; Conflict if it has ended already."""
    if not deployment.active:
        raise Conflict(
            f"deployment of version {deployment.version} is {deployment.status.title.lower()}"
            " already"
        )
    return _finish(deployment.model_copy(deep=True), DeploymentStatus.FAILED, reason, now)


def revert_target(
    versions: Sequence[JobVersion], deployments: Iterable[Deployment], current: JobVersion
) -> JobVersion | None:
    """The newest version before ``current`` whose deployment succeeded, with another spec."""
    good = {d.version for d in deployments if d.status is DeploymentStatus.SUCCESSFUL}
    for version in sorted(versions, key=lambda v: v.number, reverse=True):
        if (
            version.number < current.number
            and version.number in good
            and version.spec_hash != current.spec_hash
        ):
            return version
    return None
