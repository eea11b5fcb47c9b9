"""The manager's job service: owns jobs, their versions and allocations, and applies plans.

It keeps every job, version and allocation in memory (loaded from the store at start,
written through on each change), so a restarted manager resumes every job where it was.
One level-triggered loop does the work, woken by a submission, a change of an
allocation's task, a change of a node, and the plan's ``wake_at`` (a reschedule delay):

1. per job, each allocation's status is derived from its tasks
   (:func:`cube.manager.allocs.derive_status`, pure);
2. :func:`cube.job.reconcile.reconcile` says what must change, with the clock passed in;
3. the plan is applied: Place picks a node for the whole group (the scheduler sees the
   group as one task, :func:`cube.job.spec.placement_spec`; nodes without an allocation
   of the job first) and starts its tasks there through the manager's send path; Stop
   stops an allocation's tasks; Update stops one allocation and places its successor.

A pass that fails is logged with its traceback and the loop goes on: the next pass
starts from the records again, so nothing is lost but time.

Tasks of an allocation (``Task.alloc`` set) are never placed one by one by the task
dispatcher: when their node is lost or drained or their send fails, the manager ends
them, and the reconciler replaces the allocation as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence, Set
from datetime import UTC, datetime
from functools import reduce
from typing import TYPE_CHECKING, Any

from cube.background import cancel_all, spawn
from cube.errors import Conflict, FieldError, InvalidSpec, NotFound
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    AllocTask,
    Job,
    JobStatus,
    JobVersion,
    group_hash,
    next_version,
)
from cube.job.plan import Place, Plan
from cube.job.reconcile import datacenter_of, reconcile
from cube.job.spec import JobSpec, JobType, placement_spec
from cube.log import get_logger
from cube.manager.allocs import (
    alloc_task_id,
    derive_status,
    on_bad_node,
    preferred_nodes,
    task_views,
)
from cube.manager.lookup import find_alloc
from cube.node import Node
from cube.scheduler import Decision, allocate, release
from cube.task.model import DesiredState, Task, short_task_id
from cube.task.spec import KEEP_SECRETS, AllocRef

if TYPE_CHECKING:
    from cube.manager.core import Manager

log = get_logger("cube.manager.jobs")

#: The longest pause between two passes when nothing wakes the loop (the safety net).
SAFETY_PASS = 5.0
#: Placements tried in one pass (and in one dry run). A job of count 100,000 is placed
#: over many passes, so that the manager's other loops and its API run in between.
MAX_PLACEMENTS_PER_PASS = 500
#: The longest pause between two passes that were woken (see JobService._run).
MAX_PAUSE = 0.5
#: Job names that are routes under ``/v1/jobs/`` (see cube.manager.jobs_api).
RESERVED_JOB_NAMES = frozenset({"plan"})


def _now() -> datetime:
    return datetime.now(UTC)


class JobService:
    """Jobs, versions and allocations of one manager, and the loop that drives them."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        store = manager.store
        self.jobs: dict[str, Job] = {j.id: j for j in store.list_jobs()}
        self.versions: dict[str, dict[int, JobVersion]] = {
            j: {v.number: v for v in store.job_versions(j)} for j in self.jobs
        }
        self.allocs: dict[str, Allocation] = {a.id: a for a in store.list_allocations()}
        self._wake = asyncio.Event()
        self._wake_at: datetime | None = None
        self._loop: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Passes completed.
        self.passes = 0
        #: (job, group) -> the manager's capacity generation when a placement of the group
        #: found no node: its other placements wait for the cluster to change, as the task
        #: dispatcher's do, instead of each failing the same way on every pass.
        self._blocked: dict[tuple[str, str], int] = {}
        #: Placements this pass may still try (see MAX_PLACEMENTS_PER_PASS).
        self._budget = MAX_PLACEMENTS_PER_PASS
        #: Kept for one pass, because each placement needs them and computing them anew
        #: cost O(nodes + allocations) per placement (py-spy, bench/jobs.py: a third of the
        #: manager's CPU at 300 nodes): node name -> its datacenter, and job -> the nodes
        #: its live allocations are on (grown by each placement of the pass).
        self._datacenter: dict[str, str] = {}
        self._taken: dict[str, set[str]] = {}

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        # Supervised like the manager's other loops: a crash restarts it and shows in health.
        self._loop = self.manager.loops.start("jobs", self._run)
        self.wake()

    async def close(self) -> None:
        await cancel_all([*([self._loop] if self._loop else []), *self._background])

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            timeout = SAFETY_PASS
            if self._wake_at is not None:
                timeout = min(timeout, max(0.0, (self._wake_at - _now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            started, began = time.process_time(), time.monotonic()
            try:
                for _ in self._pass(_now()):
                    await asyncio.sleep(0)
            except Exception as exc:  # a pass that fails must not end the loop: the next heals
                log.error("job pass failed", exc=exc)
            self.passes += 1
            self.manager.telemetry.reconciled(time.monotonic() - began)
            # As the task dispatcher does: a pause as long as the CPU the pass took lets a
            # burst of wakes (every task change wakes it) gather into the next pass, so
            # that passes take at most about half the manager's time.
            await asyncio.sleep(max(0.05, min(time.process_time() - started, MAX_PAUSE)))

    # --- the API's operations -----------------------------------------------------------------
    def submit(self, spec: JobSpec) -> tuple[Job, bool]:
        """Store ``spec`` as the job's next version; False when it is the current one again."""
        if spec.job in RESERVED_JOB_NAMES:
            why = f"{spec.job!r} is reserved: POST /v1/jobs/{spec.job} is another route"
            raise InvalidSpec([FieldError("job", why)])
        now = _now()
        job = self.jobs.get(spec.job)
        current = self.current_version(job) if job is not None else None
        version = next_version(current, spec, now=now)
        if version is None and job is not None and not job.stopped:
            return job.model_copy(deep=True), False
        if job is None:
            job = Job(id=spec.job, created_at=now, updated_at=now)
        job.stopped = False
        job.updated_at = now
        versions = []
        if version is not None:
            job.version = version.number
            versions.append(version)
        # Until the next pass judges it, the job is not what it was (Complete, Dead): a
        # client following the submit must not take the old status for the new version's.
        job.status, job.status_reason = JobStatus.PENDING, f"version {job.version} submitted"
        self.manager.store.save_job(job, versions)
        self.jobs[job.id] = job
        for v in versions:
            self.versions.setdefault(job.id, {})[v.number] = v
        log.info("job submitted", job=job.id, version=job.version)
        self.wake()
        return job.model_copy(deep=True), True

    def scale(self, job_id: str, group: str, count: int) -> Job:
        """A new version that differs only in one group's count (nothing else moves).

        A stopped job is refused: a new version would start it again (as a submit does),
        which a change of count does not say; the dashboard offers no Scale there either.
        """
        job = self.job(job_id)
        if job.stopped:
            raise Conflict(
                f"job {job_id} is stopped: start it again with cube job run FILE, then scale it"
            )
        spec = self.current_version(job).spec
        try:
            index = next(i for i, g in enumerate(spec.groups) if g.name == group)
        except StopIteration:
            raise InvalidSpec(
                [FieldError("group", f"job {job_id} has no group {group!r}")]
            ) from None
        if spec.type is JobType.SYSTEM:
            raise InvalidSpec([FieldError("count", "a system job runs on every eligible node")])
        data = spec.model_dump(mode="json", context=KEEP_SECRETS)
        data["groups"][index]["count"] = count
        scaled, _ = self.submit(JobSpec.model_validate(data))
        return scaled

    def stop(self, job_id: str, *, purge: bool = False) -> Job:
        """Stop every allocation of the job; ``purge``: also forget it and its history."""
        job = self.job(job_id)
        job.stopped = True
        job.updated_at = _now()
        self.manager.store.save_job(job)
        self.reconcile_job(job, self.manager.list_nodes(), _now())
        if purge:
            for alloc in self.allocations(job=job.id):
                self.allocs.pop(alloc.id, None)
            self.manager.store.delete_job(job.id)
            self.jobs.pop(job.id, None)
            self.versions.pop(job.id, None)
            log.info("job purged", job=job.id)
        return job.model_copy(deep=True)

    def plan(self, spec: JobSpec) -> tuple[Plan, dict[str, Decision]]:
        """What submitting ``spec`` would do now, and where each placement would go.

        Nothing changes: the placements are tried on copies of the node views.
        """
        now = _now()
        job = self.jobs.get(spec.job)
        current = self.current_version(job) if job is not None else None
        version = next_version(current, spec, now=now) or current
        assert version is not None
        draft = (job or Job(id=spec.job)).model_copy(update={"stopped": False})
        views = self.manager.list_nodes()
        self._datacenter = {}  # read afresh: a node may have joined again elsewhere
        plan = reconcile(draft, version, self.allocations(job=spec.job), views, now)
        decisions: dict[str, Decision] = {}
        chosen: set[str] = set()
        failed: dict[str, Decision] = {}  # group -> its first failure: the rest fail alike
        for place in [*plan.place, *self._update_places(plan)][:MAX_PLACEMENTS_PER_PASS]:
            if place.replaces is not None:  # stop, then start: what the old one holds is free
                views = self._released(place.replaces, views)
            decision = None if place.replaces is not None else failed.get(place.group)
            if decision is None:
                decision, views = self._choose(spec, place, views, also_taken=chosen)
            if decision.node is None:
                failed[place.group] = decision
            decisions[f"{place.group}[{place.index}]"] = decision
            chosen.update([decision.node] if decision.node else [])
        return plan, decisions

    def _released(self, alloc_id: str, views: list[Node]) -> list[Node]:
        """``views`` without what allocation ``alloc_id``'s live tasks hold on its node."""
        alloc = self.allocs.get(alloc_id)
        if alloc is None or alloc.node is None:
            return views
        live = [self.manager.tasks.get(t.id) for t in alloc.tasks.values()]
        specs = [t.spec for t in live if t is not None and not t.is_terminal]
        return [reduce(release, specs, v) if v.name == alloc.node else v for v in views]

    def check_user_stop(self, task: Task) -> None:
        """Refuse ``cube stop`` of one task of an allocation that is to run.

        Stopped alone, the task ended and its allocation went on as Running ("every task
        runs"), its siblings without it (a proxy without its api), and nothing replaced it:
        a group is one unit, so it stops with its job or by a smaller count, as in Nomad.
        """
        if task.alloc is None or task.is_terminal:
            return
        alloc = self.allocs.get(task.alloc.id)
        if alloc is None or alloc.desired is not AllocDesired.RUN:
            return
        job = self.jobs.get(alloc.job)
        if job is not None and self.current_version(job).spec.type is JobType.SYSTEM:
            # One copy per eligible node: no count to lower (scale refuses a system job).
            fewer = f"keep it off {alloc.node} with a constraint in the job's file"
        else:
            fewer = f"run fewer copies (cube job scale {alloc.job} {alloc.group} N)"
        raise Conflict(
            f"task {short_task_id(task.id)} is part of allocation {alloc.name}, which runs its"
            f" tasks together: stop the job (cube job stop {alloc.job}) or {fewer}"
        )

    def job(self, job_id: str) -> Job:
        if (job := self.jobs.get(job_id)) is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def current_version(self, job: Job) -> JobVersion:
        return self.versions[job.id][job.version]

    def job_versions(self, job_id: str) -> list[JobVersion]:
        self.job(job_id)
        return [self.versions[job_id][n] for n in sorted(self.versions.get(job_id, {}))]

    def allocations(self, *, job: str | None = None, node: str | None = None) -> list[Allocation]:
        allocs = [
            a
            for a in self.allocs.values()
            if (job is None or a.job == job) and (node is None or a.node == node)
        ]
        return sorted(allocs, key=lambda a: a.created_at)

    def allocation(self, alloc_id: str) -> Allocation:
        return find_alloc(self.allocs, alloc_id)

    # --- the pass -----------------------------------------------------------------------------
    def reconcile_all(self, now: datetime) -> None:
        """One pass over every job (see the module docstring), without pausing."""
        for _ in self._pass(now):
            pass

    def _pass(self, now: datetime) -> Iterator[None]:
        """One pass, pausing after each job (the loop lets the API answer meanwhile).

        Each job starts from fresh node views: the manager's own, which already count
        what this pass placed (and what the task dispatcher placed during a pause).
        """
        self._wake_at = None
        self._budget = MAX_PLACEMENTS_PER_PASS
        self._datacenter, self._taken = {}, {}
        self._stop_orphans()
        for job in list(self.jobs.values()):
            if self.jobs.get(job.id) is not job:  # purged (or replaced) during a pause
                continue
            try:
                self.reconcile_job(job, self.manager.list_nodes(), now)
            except Exception as exc:
                log.error("reconciling a job failed", job=job.id, exc=exc)
            yield
        if self._budget <= 0:
            self.wake()  # more to place: the next pass goes on

    def reconcile_job(self, job: Job, views: list[Node], now: datetime) -> list[Node]:
        """Derive, reconcile and apply one job; returns the node views with its placements."""
        version = self.current_version(job)
        nodes = {n.name: n for n in views}
        for alloc in self.allocations(job=job.id):
            self._derive(alloc, nodes, now)
        plan = reconcile(job, version, self.allocations(job=job.id), views, now)
        views = self._apply(job, version, plan, views, now)
        if plan.wake_at is not None and (self._wake_at is None or plan.wake_at < self._wake_at):
            self._wake_at = plan.wake_at
        if (job.status, job.status_reason) != (plan.status, plan.status_reason):
            job.status, job.status_reason, job.updated_at = plan.status, plan.status_reason, now
            self.manager.store.save_job(job)
        return views

    def _derive(self, alloc: Allocation, nodes: dict[str, Node], now: datetime) -> None:
        """Bring the allocation's status and task records in line with its tasks."""
        if alloc.node is None or (alloc.is_terminal and alloc.status is not AllocStatus.LOST):
            return
        tasks = {name: self.manager.tasks.get(t.id) for name, t in alloc.tasks.items()}
        changed = False
        seen = task_views(t for t in tasks.values() if t is not None)
        if seen and seen != {k: v for k, v in alloc.tasks.items() if k in seen}:
            alloc.tasks.update(seen)
            changed = True
        if (
            alloc.desired is AllocDesired.RUN
            and not alloc.is_terminal
            and any(t is None for t in tasks.values())
        ):
            # Saved with its node, its tasks not yet (a crash in between): start them now.
            node = nodes.get(alloc.node)
            if node is not None:
                self._start_tasks(alloc, node)
        derived = None if on_bad_node(alloc, nodes) else derive_status(alloc, tasks)
        if derived is not None and derived.status is not None:
            alloc.transition(derived.status, derived.reason, now=now)
            changed = True
            log.info("allocation", alloc=alloc.id, name=alloc.name, status=derived.status.value)
        if derived is not None:
            for task_id in derived.leftovers:
                self._stop_task(task_id)
        if changed:
            alloc.updated_at = now
            self.manager.store.save_allocations([alloc])

    def _apply(
        self, job: Job, version: JobVersion, plan: Plan, views: list[Node], now: datetime
    ) -> list[Node]:
        spec = version.spec
        for stop in plan.stop:
            self._stop_alloc(self.allocs[stop.alloc], stop.reason, lost=stop.lost, now=now)
        for update in plan.update:
            old = self.allocs[update.alloc]
            if old.node is not None and not self._may_place(job.id, update.group):
                continue  # the old one keeps running until its successor has somewhere to go
            if old.node is None:  # nothing runs yet: the waiting allocation takes the new spec
                group = spec.group(old.group)
                old.version, old.group_hash = version.number, group_hash(spec, group)
                self.manager.store.save_allocations([old])
                continue
            self._stop_alloc(old, update.reason, lost=False, now=now)
            place = Place(
                update.group, update.index, update.reason, replaces=old.id, node=update.node
            )
            views = self._place(job, version, place, views, now)
        for place in plan.place:
            if self._may_place(job.id, place.group):
                views = self._place(job, version, place, views, now)
        for entry in plan.in_place:
            alloc = self.allocs[entry.alloc]
            alloc.version, alloc.updated_at = version.number, now
            self.manager.store.save_allocations([alloc])
        for keep in plan.keep:
            alloc = self.allocs[keep.alloc]
            if (
                alloc.node is None
                and not alloc.is_terminal
                and alloc.desired is AllocDesired.RUN
                and self._may_place(job.id, alloc.group)
            ):
                views = self._retry(job, version, alloc, views, now)
        return views

    def _may_place(self, job: str, group: str) -> bool:
        """Whether a placement of ``group`` may be tried now (budget, and not blocked)."""
        if self._budget <= 0:
            return False
        blocked = self._blocked.get((job, group))
        return blocked is None or blocked != self.manager.dispatcher.generation

    @staticmethod
    def _update_places(plan: Plan) -> list[Place]:
        return [
            Place(u.group, u.index, u.reason, replaces=u.alloc, node=u.node) for u in plan.update
        ]

    # --- placing ------------------------------------------------------------------------------
    def _choose(
        self,
        spec: JobSpec,
        place: Place,
        views: list[Node],
        *,
        also_taken: Set[str] = frozenset(),
        taken: Set[str] | None = None,
    ) -> tuple[Decision, list[Node]]:
        """A node for one allocation of ``place.group``, and the views with it allocated there.

        Nodes outside the job's datacenters are out; a system placement names its node;
        otherwise nodes without a live allocation of the job (nor the node ``place.avoid``)
        are tried first, then every node. ``also_taken``: nodes a dry run placed on already;
        ``taken``: the nodes of the job's live allocations, if the caller knows them.
        """
        group = spec.group(place.group)
        request = placement_spec(spec, group)
        scheduler = self.manager.scheduler
        eligible = self._in_datacenters(views, spec.datacenters)
        if place.node is not None:
            eligible = [v for v in eligible if v.name == place.node]
        if not eligible:
            where = ", ".join(spec.datacenters)
            reason = f"no node in datacenter {where}"
            if place.node is not None:
                reason = f"node {place.node} is not in datacenter {where}"
            return Decision(node=None, algorithm=scheduler.algorithm, reason=reason), views
        if taken is None:
            taken = self._live_nodes(spec.job)
        first = preferred_nodes(
            eligible, [*(n for n in taken if n), *also_taken], avoid=place.avoid
        )
        decision = None
        if first and len(first) < len(eligible):
            decision = self.manager.telemetry.place(scheduler, request, first)
        if decision is None or decision.node is None:
            decision = self.manager.telemetry.place(scheduler, request, eligible)
        if decision.node is not None:
            views = [allocate(v, request) if v.name == decision.node else v for v in views]
        return decision, views

    def _in_datacenters(self, views: list[Node], datacenters: Sequence[str]) -> list[Node]:
        """The nodes in one of ``datacenters``; each node's datacenter is read once per pass."""
        known = self._datacenter
        for view in views:
            if view.name not in known:
                known[view.name] = datacenter_of(view)
        wanted = set(datacenters)
        return [v for v in views if known[v.name] in wanted]

    def _live_nodes(self, job: str) -> set[str]:
        """The nodes the job's live allocations are on."""
        return {
            a.node
            for a in self.allocs.values()
            if a.job == job
            and a.node is not None
            and not a.is_terminal
            and a.desired is AllocDesired.RUN
        }

    def _place(
        self, job: Job, version: JobVersion, place: Place, views: list[Node], now: datetime
    ) -> list[Node]:
        """Create the allocation ``place`` asks for and start it where the scheduler says."""
        spec = version.spec
        group = spec.group(place.group)
        alloc = Allocation(
            job=job.id,
            group=group.name,
            index=place.index,
            version=version.number,
            group_hash=group_hash(spec, group),
            reschedule_events=list(place.reschedule_events),
            replaces=place.replaces,
            created_at=now,
            updated_at=now,
        )
        alloc.tasks = {t.name: AllocTask(id=alloc_task_id(alloc.id, t.name)) for t in group.tasks}
        changed = [alloc]
        if place.replaces is not None and (old := self.allocs.get(place.replaces)) is not None:
            old.replaced_by = alloc.id
            changed.append(old)
        self.allocs[alloc.id] = alloc
        return self._assign(spec, alloc, place, views, changed)

    def _retry(
        self, job: Job, version: JobVersion, alloc: Allocation, views: list[Node], now: datetime
    ) -> list[Node]:
        """Try again to place an allocation that found no node before."""
        place = Place(alloc.group, alloc.index, "retry", avoid=None)
        del job, now
        return self._assign(version.spec, alloc, place, views, [alloc])

    def _assign(
        self,
        spec: JobSpec,
        alloc: Allocation,
        place: Place,
        views: list[Node],
        changed: list[Allocation],
    ) -> list[Node]:
        self._budget -= 1
        taken = self._taken.get(alloc.job)
        if taken is None:
            taken = self._taken[alloc.job] = self._live_nodes(alloc.job)
        decision, views = self._choose(spec, place, views, taken=taken)
        alloc.placement = decision.model_dump(mode="json")
        if decision.node is None:
            self._blocked[(alloc.job, alloc.group)] = self.manager.dispatcher.generation
            alloc.status_reason = decision.reason
            self.manager.store.save_allocations(changed)
            return views
        self._blocked.pop((alloc.job, alloc.group), None)
        taken.add(decision.node)
        alloc.node = decision.node
        alloc.status_reason = f"placed on {decision.node}"
        self.manager.store.save_allocations(changed)  # the allocation first, then its tasks
        node = next(v for v in views if v.name == decision.node)
        self._start_tasks(alloc, node)
        log.info("allocation placed", alloc=alloc.id, name=alloc.name, node=decision.node)
        return views

    def _start_tasks(self, alloc: Allocation, node: Node) -> None:
        spec = self.versions[alloc.job][alloc.version].spec.group(alloc.group)
        ref = AllocRef(
            id=alloc.id, job=alloc.job, group=alloc.group, index=alloc.index, size=len(spec.tasks)
        )
        for task_spec in spec.tasks:
            task_id = alloc_task_id(alloc.id, task_spec.name)
            if task_id in self.manager.tasks:
                continue
            task = Task(id=task_id, spec=task_spec, alloc=ref, placement=alloc.placement)
            self.manager.start_alloc_task(task, node, f"placed on {node.name} with {alloc.name}")

    # --- stopping -----------------------------------------------------------------------------
    def _stop_alloc(self, alloc: Allocation, reason: str, *, lost: bool, now: datetime) -> None:
        alloc.desired, alloc.desired_reason, alloc.updated_at = AllocDesired.STOP, reason, now
        if lost and not alloc.is_terminal:
            alloc.transition(AllocStatus.LOST, reason, now=now)
        elif alloc.node is None and not alloc.is_terminal:
            alloc.transition(AllocStatus.COMPLETE, f"stopped: {reason}", now=now)
        self.manager.store.save_allocations([alloc])
        for t in alloc.tasks.values():
            self._stop_task(t.id)
        log.info("allocation stopping", alloc=alloc.id, name=alloc.name, reason=reason)

    def _stop_task(self, task_id: str) -> None:
        task = self.manager.tasks.get(task_id)
        if task is None:
            return
        if task.is_terminal:
            if task.desired is not DesiredState.STOP:
                task.desired = DesiredState.STOP
                self.manager.registry.save(task)
            return
        spawn(self.manager.stop(task_id), "stop allocation task", keep=self._background)

    def _stop_orphans(self) -> None:
        """Stop tasks whose allocation is unknown (purged, or a crash before it was saved)."""
        for task in list(self.manager.tasks.values()):
            if (
                task.alloc is not None
                and task.alloc.id not in self.allocs
                and not task.is_terminal
                and task.desired is DesiredState.RUN
            ):
                self._stop_task(task.id)
