"""The reconciler: what must change so that a job's allocations match its current version.

A pure function, modelled on Nomad's ``scheduler/reconcile``::

    plan = reconcile(job, version, allocations, nodes, now)

It reads the job, its current version, *all* its allocations (old and new), the nodes
and the time, and returns a :class:`Plan`: allocations to place, to stop, to update
(stop and start again on the new version), to move to the new version in place, and to
keep, and what must wait (a reschedule delay not yet over, a batch's ``parallelism``).
Every entry carries a reason a person can read. It changes nothing and reads no clock:
the applier does the I/O, and calls again when something changes or at ``plan.wake_at``.
Because it compares what should be with what is, every pass starts from scratch, and a
pass that was missed (a crash between two writes) is healed by the next one.

**Slots and holders.** A service or batch group with ``count: 3`` has three slots,
indexes 0, 1, 2. The *holder* of a slot is its allocation that the manager still wants
(``desired: run``) and that nothing has replaced yet (``replaced_by`` empty); the other
allocations are history (:func:`cube.job.holders.is_holder`). A system group has one slot
per eligible node instead (:mod:`cube.job.eligibility`).

**Buckets.** Each holder falls in one of Nomad's buckets, decided by its node and status:

* *untainted*: its node is ready. Keep it, or update it if its version changed.
* *migrate*: its node is draining. Stop it and place a replacement elsewhere at once.
* *lost*: its node is down or gone. Mark it lost and place a replacement at once (a
  lost allocation did not fail: it uses no reschedule attempt).
* *terminal*: it failed (or, unless batch, ended). Replace it when its reschedule
  delay is over, unless its attempts are used up: then it has failed for good.

A system group replaces nothing elsewhere: a drained or lost node's allocation just
stops, and a node that (re)joins gets one.

**Updates** (a changed spec) replace allocations as the group's ``update`` policy and
the job's deployment say (:mod:`cube.job.rollout`): ``max_parallel`` at a time, the next
batch once the previous one is healthy, stop-first or start-first, canaries first if
asked. A version that changes nothing the containers depend on (``count``,
``reschedule``, ``parallelism``, ``update``: see :func:`cube.job.model.group_hash`)
moves the allocations to it in place, which is also how a revert keeps the allocations
of the version it goes back to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cube.job import rollout
from cube.job.deployment import Deployment
from cube.job.eligibility import NodeView, ineligibility
from cube.job.holders import failed_for_good, is_holder, job_status
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobStatus,
    JobVersion,
    RescheduleEvent,
    group_hash,
)
from cube.job.plan import InPlace, Keep, Place, Plan, Stop, Update, Wait
from cube.job.spec import (
    GroupSpec,
    JobSpec,
    JobType,
    ReschedulePolicy,
    reschedule_policy,
    update_policy,
)
from cube.node import NodeState

# --- the reconciler ------------------------------------------------------------------------


def reconcile(
    job: Job,
    version: JobVersion,
    allocations: Iterable[Allocation],
    nodes: Iterable[NodeView],
    now: datetime,
    *,
    deployment: Deployment | None = None,
) -> Plan:
    """The plan that brings ``job``'s allocations to ``version`` (see the module docstring).

    ``allocations`` are the job's, in any order, including terminal and replaced ones;
    ``nodes`` are every node the manager knows (a node missing from it counts as lost);
    ``deployment``: the current version's (None for a batch job).
    """
    spec = version.spec
    plan = Plan(job=job.id, version=version.number)
    mine = [a for a in allocations if a.job == job.id]
    if job.stopped:
        for alloc in mine:
            if alloc.desired is AllocDesired.RUN and not alloc.is_terminal:
                plan.stop.append(Stop(alloc.id, "the job was stopped"))
        plan.status, plan.status_reason = JobStatus.DEAD, "stopped"
        return plan

    by_node = {n.name: n for n in nodes}
    groups = {g.name for g in spec.groups}
    for alloc in mine:
        if (
            alloc.group not in groups
            and alloc.desired is AllocDesired.RUN
            and not alloc.is_terminal
        ):
            plan.stop.append(
                Stop(alloc.id, f"group {alloc.group} is not in version {version.number}")
            )
    doomed = failed_for_good(spec, mine)
    for group in spec.groups:
        hash = group_hash(spec, group)
        state = _GroupPass(
            spec=spec,
            group=group,
            version=version.number,
            hash=hash,
            rollout=rollout.Rollout(group.name, update_policy(spec, group), deployment, hash),
            policy=reschedule_policy(spec, group),
            nodes=by_node,
            now=now,
            plan=plan,
            allocs=[a for a in mine if a.group == group.name],
            doomed=doomed is not None,
        )
        if spec.type is JobType.SYSTEM:
            _reconcile_system(state)
        else:
            _reconcile_counted(state)
    plan.status, plan.status_reason = job_status(spec, mine, doomed)
    return plan


@dataclass
class _GroupPass:
    """Everything one group's pass reads, and the plan it writes to."""

    spec: JobSpec
    group: GroupSpec
    version: int
    hash: str
    rollout: rollout.Rollout
    policy: ReschedulePolicy
    nodes: Mapping[str, NodeView]
    now: datetime
    plan: Plan
    allocs: list[Allocation]
    doomed: bool  # batch: an allocation failed for good, so nothing new starts
    update_budget: int = 0

    @property
    def batch(self) -> bool:
        return self.spec.type is JobType.BATCH

    @property
    def system(self) -> bool:
        return self.spec.type is JobType.SYSTEM


def _pick_holders(state: _GroupPass, key: str) -> dict[int | str, Allocation]:
    """The holder of each slot (index or node); duplicates are stopped, the best one kept.

    Two holders of one slot should not happen, but a crash between two writes of the
    applier can leave them; the one that runs (then the newest) stays.
    """
    slots: dict[int | str, list[Allocation]] = defaultdict(list)
    for alloc in state.allocs:
        if is_holder(alloc):
            slots[alloc.index if key == "index" else alloc.node or ""].append(alloc)
    chosen: dict[int | str, Allocation] = {}
    for slot, holders in slots.items():
        holders.sort(
            key=lambda a: (not a.is_terminal, a.status is AllocStatus.RUNNING, a.created_at)
        )
        best = holders.pop()
        chosen[slot] = best
        for extra in holders:
            state.plan.stop.append(Stop(extra.id, f"{best.name} ({best.id}) holds the same slot"))
    return chosen


# --- service and batch ---------------------------------------------------------------------


def _reconcile_counted(state: _GroupPass) -> None:
    """A service or batch group: ``count`` slots, each held by one allocation."""
    group, plan = state.group, state.plan
    wanted = group.wanted
    holders = _pick_holders(state, "index")
    # Scale down: the slots beyond count go, highest index first.
    for index in sorted((i for i in holders if isinstance(i, int) and i >= wanted), reverse=True):
        extra = holders[index]
        if not extra.is_terminal:
            plan.stop.append(Stop(extra.id, f"{group.name} was scaled to {wanted}"))

    state.update_budget = rollout.budget(state.rollout, state.allocs, state.nodes)
    reclaimed: set[int] = set()
    if not state.batch:
        reclaimed = rollout.superseded(
            state.rollout, state.allocs, holders, wanted, plan, state.nodes
        )
        reclaimed |= rollout.canaries(state.rollout, group.name, state.allocs, holders, plan)
    # Placements that start new work queue for batch parallelism; replacements of work that
    # runs now (lost, drained) take the place of what they replace and never wait.
    queued: list[Place] = []
    for index in range(wanted):
        alloc = holders.get(index)
        if index in reclaimed:
            continue  # taken back by the allocation its holder superseded, or by a canary
        if alloc is None:
            if state.batch and state.doomed:
                continue
            what = "has not run yet" if state.batch else "has no allocation"
            queued.append(Place(group.name, index, f"count is {wanted}; index {index} {what}"))
        elif not alloc.is_terminal:
            _live(state, alloc)
        else:
            place = _terminal(state, alloc)
            if place is not None:
                queued.append(place)
    _admit(state, queued, holders)


def _admit(state: _GroupPass, queued: list[Place], holders: Mapping[int | str, Allocation]) -> None:
    """Place what is queued, as far as a batch group's ``parallelism`` allows."""
    limit = state.group.parallelism if state.batch else None
    if limit is None:
        state.plan.place.extend(queued)
        return
    busy = sum(
        1
        for slot, alloc in holders.items()
        if isinstance(slot, int) and slot < state.group.wanted and not alloc.is_terminal
    )
    for place in queued:
        if busy < limit:
            state.plan.place.append(place)
            busy += 1
        else:
            state.plan.wait.append(
                Wait(
                    place.group,
                    place.index,
                    f"parallelism {limit} reached: waits for a running allocation to finish",
                    alloc=place.replaces,
                )
            )


def _live(state: _GroupPass, alloc: Allocation) -> None:
    """A holder that is pending or running: untainted, migrate or lost."""
    plan = state.plan
    node = state.nodes.get(alloc.node) if alloc.node is not None else None
    if alloc.node is not None and (node is None or node.state is NodeState.DOWN):
        why = f"node {alloc.node} is {'down' if node is not None else 'gone'}"
        plan.stop.append(Stop(alloc.id, why, lost=True))
        if not state.system:
            plan.place.append(_replacement(alloc, f"replaces {alloc.name}: {why}", events=()))
        return
    if node is not None and (node.drain or node.state is NodeState.DRAINING):
        why = f"node {alloc.node} is draining"
        plan.stop.append(Stop(alloc.id, why))
        if not state.system:
            plan.place.append(_replacement(alloc, f"replaces {alloc.name}: {why}", events=()))
        return
    if state.system and node is not None:
        problem = ineligibility(node, state.spec, state.group)
        if problem is not None:
            plan.stop.append(Stop(alloc.id, problem))
            return
    _untainted(state, alloc)


def _untainted(state: _GroupPass, alloc: Allocation) -> None:
    """A holder on a good node: keep it, or bring it to the current version."""
    plan, version, roll = state.plan, state.version, state.rollout
    if alloc.group_hash != state.hash:
        if state.update_budget > 0 and roll.may_replace:
            state.update_budget -= 1
            plan.update.append(
                Update(
                    alloc.id,
                    alloc.group,
                    alloc.index,
                    f"version {version} changes what {alloc.name} runs"
                    f" (was version {alloc.version})",
                    node=alloc.node if state.system else None,
                    start_first=roll.start_first and not state.system,
                )
            )
        else:
            plan.keep.append(Keep(alloc.id, roll.held_up(version)))
    elif alloc.version != version:
        plan.in_place.append(
            InPlace(alloc.id, f"version {version} changes nothing {alloc.name} runs")
        )
    else:
        plan.keep.append(Keep(alloc.id, f"{alloc.status.value} on {alloc.node}"))


def _terminal(state: _GroupPass, alloc: Allocation) -> Place | None:
    """A holder that ended: done (batch), or to be replaced now, later, or never.

    Returns the replacement to place now (the caller applies batch parallelism to it).
    """
    plan = state.plan
    if alloc.status is AllocStatus.COMPLETE and state.batch:
        plan.keep.append(Keep(alloc.id, "completed"))
        return None
    if alloc.status is AllocStatus.LOST:
        # Marked lost but not replaced yet (the applier stopped half way): replace now.
        return _replacement(
            alloc,
            f"replaces {alloc.name}: it was lost",
            events=(),
            node=alloc.node if state.system else None,
        )
    if state.batch and state.doomed:
        plan.keep.append(Keep(alloc.id, f"{alloc.status.value}; not rescheduled: the job failed"))
        return None
    done, policy = alloc.reschedule_attempts, state.policy
    ended = (
        "failed"
        if alloc.status is AllocStatus.FAILED
        else f"ended (a {state.spec.type} job runs until stopped)"
    )
    detail = f": {alloc.status_reason}" if alloc.status_reason else ""
    if policy.exhausted(done):
        plan.keep.append(
            Keep(alloc.id, f"{ended}{detail}; failed for good after {done} reschedule attempts")
        )
        return None
    delay = policy.delay_before(done + 1)
    due = (alloc.finished_at or alloc.updated_at) + timedelta(seconds=delay)
    of = f" of {policy.attempts}" if policy.attempts is not None else ""
    if state.now < due:
        plan.wait.append(
            Wait(
                alloc.group,
                alloc.index,
                f"{alloc.name} {ended}{detail}; reschedule {done + 1}{of} at {due.isoformat()}",
                alloc=alloc.id,
                due=due,
            )
        )
        return None
    event = RescheduleEvent(time=state.now, prev_alloc=alloc.id, prev_node=alloc.node, delay=delay)
    return _replacement(
        alloc,
        f"replaces {alloc.name}, which {ended}{detail}; reschedule {done + 1}{of}",
        events=(event,),
        node=alloc.node if state.system else None,
    )


def _replacement(
    alloc: Allocation, reason: str, *, events: tuple[RescheduleEvent, ...], node: str | None = None
) -> Place:
    """A placement that takes ``alloc``'s slot, carrying its reschedule history on."""
    return Place(
        alloc.group,
        alloc.index,
        reason,
        replaces=alloc.id,
        node=node,
        avoid=None if node is not None else alloc.node,
        reschedule_events=(*alloc.reschedule_events, *events),
    )


# --- system --------------------------------------------------------------------------------


def _reconcile_system(state: _GroupPass) -> None:
    """A system group: one allocation on every eligible node, none moved elsewhere."""
    group, plan = state.group, state.plan
    holders = _pick_holders(state, "node")
    state.update_budget = rollout.budget(state.rollout, state.allocs, state.nodes)
    for alloc in holders.values():
        node = state.nodes.get(alloc.node) if alloc.node is not None else None
        if not alloc.is_terminal:
            _live(state, alloc)
            continue
        problem = "node is gone" if node is None else ineligibility(node, state.spec, group)
        if problem is not None:
            plan.keep.append(Keep(alloc.id, f"{alloc.status.value}; {problem}"))
            continue
        place = _terminal(state, alloc)
        if place is not None:
            plan.place.append(place)
    taken = {a.index for a in state.allocs if is_holder(a)}
    for node in sorted(state.nodes.values(), key=lambda n: n.name):
        if node.name in holders or ineligibility(node, state.spec, group) is not None:
            continue
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        taken.add(index)
        plan.place.append(
            Place(group.name, index, f"node {node.name} is eligible and runs none", node=node.name)
        )
