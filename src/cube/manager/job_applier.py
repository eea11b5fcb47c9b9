"""The applier: turns a reconciler's plan into placements, stops and record changes.

:func:`cube.job.reconcile.reconcile` decides, with the clock passed in; this is what
follows, made on the job's draft (:mod:`cube.manager.job_drafts`): saved with the rest
of the slice, then shown, and only then are the tasks started and stopped. Place picks
a node for the whole group (the scheduler sees the group as one task,
:func:`cube.job.spec.placement_spec`; nodes without an allocation of the job first:
:mod:`cube.manager.job_placement`) and starts its tasks there through the manager's send
path; Stop stops an allocation's tasks; Update stops one allocation and places its
successor.


A placement is tried before anything is recorded: one that finds no node records nothing
(as in Nomad, where it leaves a blocked evaluation, not an allocation). Its group waits
for the cluster's capacity to change, or for a new version, instead of each of its
placements failing the same way on every pass (:mod:`cube.manager.job_blocks`, which
also says how many could not be placed and why, for the job's status and the API).

It also paces itself, as the state it owns says: a pass tries at most
:data:`MAX_PLACEMENTS_PER_PASS` placements, none while :data:`SEND_BACKLOG` sends wait,
and a job's placements stop at the end of its slice (set by :mod:`cube.manager.job_loop`);
what is left is kept for the next slice (:meth:`Applier.take_rest`).

Tasks of an allocation (``Task.alloc`` set) are never placed one by one by the task
dispatcher: when their node is lost or drained or their send fails, the manager ends
them, and the reconciler replaces the allocation as a whole.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cube.background import spawn
from cube.job.deployment import Deployment
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    AllocTask,
    JobVersion,
)
from cube.job.plan import Place, Plan
from cube.log import get_logger
from cube.manager.allocs import alloc_task_id
from cube.manager.job_blocks import Blocks
from cube.manager.job_changes import JobChanges
from cube.manager.job_drafts import JobDraft
from cube.manager.job_placement import Placer
from cube.manager.pass_views import PassViews
from cube.node import Node
from cube.task.model import DesiredState, Task
from cube.task.spec import AllocRef

if TYPE_CHECKING:
    from cube.manager.core import Manager

log = get_logger("cube.manager.jobs")

#: Placements tried in one pass (and in one dry run). A job of count 100,000 is placed
#: over many passes, so that the manager's other loops and its API run in between.
MAX_PLACEMENTS_PER_PASS = 500
#: Task sends waiting or in flight beyond which a pass places no more: placing faster
#: than the nodes are told only queues sends (and their memory) in the manager.
SEND_BACKLOG = 256

#: What a slice left of a job's plan: its version, the placements still to make, and the
#: deployment they belong to (if any).
Rest = tuple[int, list[Place], str | None]


class Applier:
    """Carries out plans; see the module docstring."""

    def __init__(
        self,
        manager: Manager,
        placer: Placer,
        changes: JobChanges,
        *,
        rollout: Callable[[JobDraft, Plan, datetime], None],
        background: set[asyncio.Task[Any]],
    ) -> None:
        self.manager = manager
        self.placer = placer
        self.changes = changes
        self._rollout = rollout  # a plan's reclaims and promotions (cube.manager.deployments)
        self._background = background
        #: The groups whose placements found no node, and wait (cube.manager.job_blocks).
        self.blocks = Blocks()
        #: Placements this pass may still try (see MAX_PLACEMENTS_PER_PASS).
        self._budget = MAX_PLACEMENTS_PER_PASS
        #: Kept for one pass, because each placement needs it and computing it anew cost
        #: O(allocations) per placement: job -> the nodes its live allocations are on
        #: (grown by each placement of the pass).
        self._taken: dict[str, set[str]] = {}
        # The current slice of a pass: when it ends (time.perf_counter()), the placements
        # its job tried (at least one is), and whether it ended with some left.
        self._slice_end = 0.0
        self._slice_placed = 0
        self._cut = False
        #: job -> what a slice or pass left of its plan, so that the next slice goes on
        #: with it instead of reconciling the whole job again.
        self._rest: dict[str, Rest] = {}
        #: Tasks this slice placed, to be sent once its drafts are saved (see SEND_BACKLOG).
        self._unsent = 0

    # --- pacing -------------------------------------------------------------------------------
    def begin_pass(self) -> None:
        self._budget = MAX_PLACEMENTS_PER_PASS
        self._taken = {}
        self._unsent = 0

    def saved(self) -> None:
        """The slice's drafts were saved (or refused): their tasks are on their way (or
        not), and count as the manager's sends in flight."""
        self._unsent = 0

    def begin_slice(self, end: float) -> None:
        """A job's slice starts: its placements stop once ``time.perf_counter()`` passes ``end``."""
        self._slice_end, self._slice_placed = end, 0

    def forget_job(self, job: str) -> None:
        """A purged job: its groups wait for nothing, and no slice goes on with it."""
        self.blocks.forget(job)
        self._rest.pop(job, None)

    def take_rest(self, job: str) -> Rest | None:
        """What a slice left of ``job``'s plan (forgotten here; also what a refused slice
        left, which the next pass reconciles from the records)."""
        return self._rest.pop(job, None)

    # --- applying -----------------------------------------------------------------------------
    def apply(
        self,
        draft: JobDraft,
        version: JobVersion,
        plan: Plan,
        views: PassViews,
        now: datetime,
        *,
        deployment: Deployment | None = None,
    ) -> bool:
        """Carry out ``plan`` on ``draft``; returns whether the job's slice ended with
        placements left."""
        self._cut = False
        self.blocks.plan_begins(
            draft.id, {p.group for p in plan.place} | {u.group for u in plan.update}
        )
        placed_by = deployment.id if deployment is not None else None
        for stop in plan.stop:
            self._stop_alloc(draft, stop.alloc, stop.reason, lost=stop.lost, now=now)
        self._rollout(draft, plan, now)
        for update in plan.update:
            # The old one keeps running until its successor has somewhere to go.
            place = Place(
                update.group, update.index, update.reason, replaces=update.alloc, node=update.node
            )
            if self._waits(draft.id, place, version.number) or not self._may_place(draft.id):
                continue
            # start-first: the old one runs until its successor is healthy.
            stop_first = not update.start_first
            self._place(
                draft, version, place, views, now, deployment=placed_by, stop_first=stop_first
            )
        for entry in plan.in_place:
            alloc = draft.edit(entry.alloc)
            alloc.version, alloc.updated_at = version.number, now
        self._place_all(draft, version, plan.place, views, now, deployment=placed_by)
        return self._cut

    def apply_rest(
        self, draft: JobDraft, version: JobVersion, rest: Rest, views: PassViews, now: datetime
    ) -> bool:
        """Go on with what a slice left (:meth:`take_rest`); returns whether it was cut again."""
        self._cut = False
        self._place_all(draft, version, rest[1], views, now, deployment=rest[2])
        return self._cut

    def _place_all(
        self,
        draft: JobDraft,
        version: JobVersion,
        places: list[Place],
        views: PassViews,
        now: datetime,
        *,
        deployment: str | None = None,
    ) -> None:
        """Make the plan's placements until the slice, the pass's budget or the send
        backlog says stop: what is left is kept for the next slice (see _rest)."""
        job = draft.id
        for n, place in enumerate(places):
            if self._waits(job, place, version.number):
                continue
            if not self._may_place(job):
                if self._cut or job in self.changes.unfinished:
                    self._rest[job] = (version.number, places[n:], deployment)
                    return
                continue
            self._place(draft, version, place, views, now, deployment=deployment)

    def _waits(self, job: str, place: Place, version: int) -> bool:
        generation = self.manager.dispatcher.generation
        return self.blocks.waits(job, place, version=version, generation=generation)

    def _may_place(self, job: str) -> bool:
        """Whether a placement may be tried now: within the pass's budget, the send
        backlog and the job's slice (else the job is left for the next pass, or the
        next slice)."""
        sends = self.manager.dispatcher.sends_in_flight + self._unsent
        if self._budget <= 0 or sends >= SEND_BACKLOG:
            self.changes.unfinished.add(job)
            return False
        if self._slice_placed and time.perf_counter() >= self._slice_end:
            self._cut = True
            return False
        return True

    # --- placing ------------------------------------------------------------------------------
    def _place(
        self,
        draft: JobDraft,
        version: JobVersion,
        place: Place,
        views: PassViews,
        now: datetime,
        *,
        deployment: str | None = None,
        stop_first: bool = False,
    ) -> None:
        """Ask the scheduler where ``place`` goes; if somewhere, create the allocation and
        start it there, else record nothing and mark the group blocked.

        ``stop_first``: ``place`` replaces an allocation that stops first; what it holds
        is free for the placement, and it is stopped only if the placement found a node
        (else it goes on running, as Nomad stops an old allocation only in a plan that
        places its successor).
        """
        spec = version.spec
        group = spec.group(place.group)
        self._budget -= 1
        self._slice_placed += 1
        taken = self._taken.get(draft.id)
        if taken is None:
            taken = self._taken[draft.id] = draft.live_nodes()
        old = draft.alloc(place.replaces) if place.replaces is not None else None
        if stop_first and old is not None:
            self.placer.release(old.id, views)
        decision = self.placer.choose(spec, place, views, taken=taken)
        generation = self.manager.dispatcher.generation
        if decision.node is None:
            if stop_first and old is not None:
                self.placer.hold(old.id, views)
            self.blocks.found_no_node(
                draft.id, place, decision, version=version.number, generation=generation
            )
            return
        self.blocks.found_a_node(draft.id, place, version=version.number, generation=generation)
        if stop_first and old is not None:
            self._stop_alloc(draft, old.id, place.reason, lost=False, now=now)
        alloc = Allocation(
            job=draft.id,
            group=group.name,
            index=place.index,
            version=version.number,
            group_hash=self.placer.hash(spec, group),
            reschedule_events=list(place.reschedule_events),
            replaces=place.replaces,
            deployment=deployment,
            canary=place.canary,
            node=decision.node,
            placement=decision.model_dump(mode="json"),
            status_reason=f"placed on {decision.node}",
            created_at=now,
            updated_at=now,
        )
        alloc.tasks = {t.name: AllocTask(id=alloc_task_id(alloc.id, t.name)) for t in group.tasks}
        if old is not None:
            draft.edit(old.id).replaced_by = alloc.id
        draft.add(alloc)
        taken.add(decision.node)
        self.start_tasks(draft, alloc, views[decision.node])  # once the allocation is saved
        node = decision.node
        draft.then(
            lambda: log.info("allocation placed", alloc=alloc.id, name=alloc.name, node=node)
        )

    def start_tasks(self, draft: JobDraft, alloc: Allocation, node: Node) -> None:
        """Start the allocation's tasks on ``node`` (those the manager does not know yet)
        once ``draft`` is shown; their resources are held there meanwhile, so that the
        task dispatcher does not place on them while the allocation is being saved."""
        spec = draft.version(alloc.version).spec.group(alloc.group)
        ref = AllocRef(
            id=alloc.id, job=alloc.job, group=alloc.group, index=alloc.index, size=len(spec.tasks)
        )
        reason = f"placed on {node.name} with {alloc.name}"
        for task_spec in spec.tasks:
            task_id = alloc_task_id(alloc.id, task_spec.name)
            if task_id in self.manager.tasks or self.manager.dispatcher.in_flight(task_id):
                continue  # known, or its start is being saved (it holds its resources)
            task = Task(id=task_id, spec=task_spec, alloc=ref, placement=alloc.placement)
            self.manager.node_registry.hold(node.name, task)
            draft.holds.append((node.name, task))
            self._unsent += 1
            draft.then(functools.partial(self._start_task, task, node, reason))

    def _start_task(self, task: Task, node: Node, reason: str) -> None:
        if task.id not in self.manager.tasks:  # (started meanwhile by another way)
            self.manager.start_alloc_task(task, node, reason)

    # --- stopping -----------------------------------------------------------------------------
    def stop_alloc(self, draft: JobDraft, alloc_id: str, reason: str, *, now: datetime) -> None:
        """Stop an allocation (a deployment's successor that gives its slot back)."""
        self._stop_alloc(draft, alloc_id, reason, lost=False, now=now)

    def _stop_alloc(
        self, draft: JobDraft, alloc_id: str, reason: str, *, lost: bool, now: datetime
    ) -> None:
        """Stop the allocation in the draft; its tasks once that is saved."""
        alloc = draft.edit(alloc_id)
        alloc.desired, alloc.desired_reason, alloc.updated_at = AllocDesired.STOP, reason, now
        if lost and not alloc.is_terminal:
            alloc.transition(AllocStatus.LOST, reason, now=now)
        for t in alloc.tasks.values():
            draft.then(functools.partial(self.stop_task, t.id, reason))
        draft.then(
            lambda: log.info("allocation stopping", alloc=alloc.id, name=alloc.name, reason=reason)
        )

    def stop_task(self, task_id: str, reason: str) -> None:
        """Stop one task of an allocation; ``reason`` is recorded as the reason of its end
        (on its node too), not "stopped by user"."""
        task = self.manager.tasks.get(task_id)
        if task is None:
            return
        if task.is_terminal:
            if task.desired is not DesiredState.STOP:
                task.desired, task.desired_reason = DesiredState.STOP, reason
                self.manager.registry.save(task)
            return
        stop = self.manager.stop(task_id, reason=reason)
        spawn(stop, "stop allocation task", keep=self._background)
