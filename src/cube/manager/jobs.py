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

**At scale** (bench/jobs.py, docs/benchmarks.md section 5): a pass looks only at the
jobs that changed (see :mod:`cube.manager.job_changes`), and at every job every
:data:`FULL_PASS` seconds; it works in slices of :data:`SLICE` seconds, each one store
transaction, with a pause between two so that the loop answers the nodes; it stops
placing while :data:`SEND_BACKLOG` sends wait; and a placement costs O(nodes examined)
(:mod:`cube.manager.pass_views`), not O(nodes).

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
from collections.abc import Collection, Iterable, Iterator, Mapping, Set
from datetime import UTC, datetime
from functools import reduce
from typing import TYPE_CHECKING, Any

from cube.background import cancel_all, spawn
from cube.errors import Conflict, FieldError, InvalidSpec, NotFound
from cube.job.deployment import Deployment
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
from cube.job.reconcile import reconcile
from cube.job.spec import GroupSpec, JobSpec, JobType, placement_spec
from cube.log import get_logger
from cube.manager.allocs import (
    alloc_task_id,
    derive_status,
    on_bad_node,
    passed_over,
    task_views,
)
from cube.manager.deployments import Deployments, apply_rollout
from cube.manager.job_changes import JobChanges, Todo
from cube.manager.lookup import find_alloc
from cube.manager.pass_views import PassViews
from cube.node import Node
from cube.scheduler import Decision, allocate, release
from cube.task.model import DesiredState, Task, short_task_id
from cube.task.spec import KEEP_SECRETS, AllocRef, TaskSpec

if TYPE_CHECKING:
    from cube.manager.core import Manager

log = get_logger("cube.manager.jobs")

#: The longest pause between two passes when nothing wakes the loop (the safety net).
SAFETY_PASS = 5.0
#: Placements tried in one pass (and in one dry run). A job of count 100,000 is placed
#: over many passes, so that the manager's other loops and its API run in between.
MAX_PLACEMENTS_PER_PASS = 500
#: The longest and the shortest pause between two passes (see JobService._run).
MAX_PAUSE = 0.5
MIN_PAUSE = 0.05
#: How long one job places before the pass commits, lets the loop answer the nodes and
#: the API, and goes on (with fresh node views). A pass that held the loop for seconds
#: made simulated workers miss the manager's calls and stop their tasks (bench/jobs.py).
SLICE = 0.1
#: Task sends waiting or in flight beyond which a pass places no more: placing faster
#: than the nodes are told only queues sends (and their memory) in the manager.
SEND_BACKLOG = 256
#: Seconds between two passes over every job (the others look only at the jobs that
#: changed: see cube.manager.job_changes). The safety net for a change nobody reported.
FULL_PASS = 30.0
#: Job names that are routes under ``/v1/jobs/`` (see cube.manager.jobs_api).
RESERVED_JOB_NAMES = frozenset({"plan"})


def _now() -> datetime:
    return datetime.now(UTC)


#: The clock the job routes pass to the deployment operations.
utc_now = _now


class JobService:
    """Jobs, versions and allocations of one manager, and the loop that drives them."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        store = manager.store
        self.jobs: dict[str, Job] = {j.id: j for j in store.list_jobs()}
        self.versions: dict[str, dict[int, JobVersion]] = {
            j: {v.number: v for v in store.job_versions(j)} for j in self.jobs
        }
        self.allocs: dict[str, Allocation] = {}
        #: Allocation IDs by job and by node (a dict as an ordered set: oldest first).
        self._by_job: dict[str, dict[str, None]] = {}
        self._by_node: dict[str, dict[str, None]] = {}
        for alloc in store.list_allocations():
            self._add(alloc)
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
        #: Kept for one pass, because each placement needs it and computing it anew cost
        #: O(allocations) per placement: job -> the nodes its live allocations are on
        #: (grown by each placement of the pass).
        self._taken: dict[str, set[str]] = {}
        #: What the next pass looks at: a pass reconciles the jobs that changed.
        self.changes = JobChanges(self.jobs)
        #: Deployments: kept, advanced each pass (cube.manager.deployments).
        self.deployments = Deployments(self)
        self._full_due = 0.0  #: time.monotonic() of the next pass over every job
        #: Passes completed that looked at every job.
        self.full_passes = 0
        # The current slice of a pass (see _pass): when it ends (time.perf_counter()), the
        # placements its job tried (at least one is), and whether it ended with some left.
        self._slice_end = 0.0
        self._slice_placed = 0
        self._cut = False
        #: job -> (its version, the placements and retries a slice or pass left), so that
        #: the next slice goes on with them instead of reconciling the whole job again.
        #: (The deployment the placements belong to, if any, too.)
        self._rest: dict[str, tuple[int, list[Place], list[str], str | None]] = {}
        #: (id of a version's spec, group) -> that spec, the group's placement spec and hash.
        self._requests: dict[tuple[int, str], tuple[JobSpec, TaskSpec, str]] = {}
        #: IDs of tasks whose allocation was purged: forgotten once they stopped.
        self._orphans: set[str] = set()

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        # Supervised like the manager's other loops: a crash restarts it and shows in health.
        self._loop = self.manager.loops.start("jobs", self._run)
        self.wake()

    async def close(self) -> None:
        await cancel_all([*([self._loop] if self._loop else []), *self._background])

    def wake(self) -> None:
        """Something changed (a node, the cluster's capacity): the next pass finds what."""
        self._wake.set()

    def task_changed(self, task: Task) -> None:
        """A task of an allocation changed: the next pass derives its allocation again
        (or forgets the task, if its allocation was purged and it has stopped)."""
        if task.alloc is not None:
            if task.alloc.id in self.allocs:
                self.changes.alloc_changed(task.alloc.job, task.alloc.id)
            else:
                self._orphans.add(task.id)
            self._wake.set()

    def touch(self, job_id: str) -> None:
        """Reconcile ``job_id`` in the next pass (it was submitted, scaled, stopped, or
        its deployment was moved by hand), and run that pass soon."""
        self.changes.job_changed(job_id)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            timeout = SAFETY_PASS
            if self._wake_at is not None:
                timeout = min(timeout, max(0.0, (self._wake_at - _now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            full = time.monotonic() >= self._full_due
            if full:
                self._full_due = time.monotonic() + FULL_PASS
            cpu = 0.0  # the pass's own: not what the loop ran during its pauses
            started, began = time.process_time(), time.monotonic()
            try:
                for _ in self._pass(_now(), full=full):
                    cpu += time.process_time() - started
                    await asyncio.sleep(0)
                    started = time.process_time()
            except Exception as exc:  # a pass that fails must not end the loop: the next heals
                log.error("job pass failed", exc=exc)
            cpu += time.process_time() - started
            self.passes += 1
            self.manager.telemetry.reconciled(time.monotonic() - began)
            # As the task dispatcher does: a pause as long as the CPU the pass took lets a
            # burst of wakes (every task change wakes it) gather into the next pass, so
            # that passes take at most about half the manager's time. Not after a pass
            # that stopped with placements left (the pass's budget, the send backlog):
            # the loop ran everything else between its slices, and a pause as long as
            # the pass halved the rate at which a large job is placed (bench/jobs.py).
            pause = MIN_PAUSE if self.changes.unfinished else min(cpu, MAX_PAUSE)
            await asyncio.sleep(max(MIN_PAUSE, pause))

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
        if spec.type is not JobType.BATCH:  # a new version, or a stopped one started again
            self.deployments.start(job, self.allocations(job=job.id), now)
        log.info("job submitted", job=job.id, version=job.version)
        self.touch(job.id)
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
        self.reconcile_job(job, PassViews(self.manager.list_nodes()), _now())
        if purge:
            for alloc in self.allocations(job=job.id):
                self._forget(alloc)
                self._orphans.update(t.id for t in alloc.tasks.values())
            self._forget_stopped_orphans()
            self.manager.store.delete_job(job.id)
            self.deployments.forget(job.id)
            self.jobs.pop(job.id, None)
            self.versions.pop(job.id, None)
            self._requests.clear()  # built again as needed: forget the purged versions'
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
        views = PassViews(self.manager.list_nodes())
        allocs = self.allocations(job=spec.job)
        deployment = self.deployments.preview(draft, version, allocs, now)
        plan = reconcile(draft, version, allocs, views.nodes, now, deployment=deployment)
        decisions: dict[str, Decision] = {}
        taken = self._live_nodes(spec.job)  # grown by the dry run's own placements
        failed: dict[str, Decision] = {}  # group -> its first failure: the rest fail alike
        started_first = {u.alloc for u in plan.update if u.start_first}  # the old one runs on
        for place in [*plan.place, *self._update_places(plan)][:MAX_PLACEMENTS_PER_PASS]:
            if place.replaces is not None and place.replaces not in started_first:
                self._release(place.replaces, views)  # stop, then start: it is free
            decision = None if place.replaces is not None else failed.get(place.group)
            if decision is None:
                decision = self._choose(spec, place, views, taken=taken)
            if decision.node is None:
                failed[place.group] = decision
            decisions[f"{place.group}[{place.index}]"] = decision
            taken.update([decision.node] if decision.node else [])
        return plan, decisions

    def _release(self, alloc_id: str, views: PassViews) -> None:
        """Take off ``views`` what allocation ``alloc_id``'s live tasks hold on its node."""
        alloc = self.allocs.get(alloc_id)
        if alloc is None or alloc.node is None or alloc.node not in views:
            return
        live = [self.manager.tasks.get(t.id) for t in alloc.tasks.values()]
        specs = [t.spec for t in live if t is not None and not t.is_terminal]
        views.replace(reduce(release, specs, views[alloc.node]))

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
        ids: Collection[str] = self.allocs
        if job is not None:
            ids = self._by_job.get(job, {})
        elif node is not None:
            ids = self._by_node.get(node, {})
        allocs = [
            a
            for a in map(self.allocs.__getitem__, ids)
            if (job is None or a.job == job) and (node is None or a.node == node)
        ]
        return sorted(allocs, key=lambda a: a.created_at)

    def _add(self, alloc: Allocation) -> None:
        """Keep ``alloc``, and index it by job and node (see _placed for a node set later)."""
        self.allocs[alloc.id] = alloc
        self._by_job.setdefault(alloc.job, {})[alloc.id] = None
        if alloc.node is not None:
            self._by_node.setdefault(alloc.node, {})[alloc.id] = None

    def _forget(self, alloc: Allocation) -> None:
        self.allocs.pop(alloc.id, None)
        self._by_job.get(alloc.job, {}).pop(alloc.id, None)
        if alloc.node is not None:
            self._by_node.get(alloc.node, {}).pop(alloc.id, None)

    def allocation(self, alloc_id: str) -> Allocation:
        return find_alloc(self.allocs, alloc_id)

    # --- the pass -----------------------------------------------------------------------------
    def reconcile_all(self, now: datetime) -> None:
        """One pass over every job (see the module docstring), without pausing."""
        for _ in self._pass(now, full=True):
            pass

    def _pass(self, now: datetime, *, full: bool = False) -> Iterator[None]:
        """One pass over the jobs that need it (:class:`JobChanges`; every job if ``full``).

        The pass works in slices of about :data:`SLICE` seconds: at the end of one it
        commits what it wrote (one store transaction per slice, not one per record; the
        sends of its placements start only after that, when the loop runs them) and
        pauses, so that the loop answers the nodes and the API; then it goes on with fresh
        node views (the task dispatcher may have placed meanwhile). A job whose slice
        ended with placements left is reconciled again in the same pass.
        """
        self._budget = MAX_PLACEMENTS_PER_PASS
        self._taken = {}
        if full:
            self._stop_orphans()
        self._forget_stopped_orphans()
        views = PassViews(self.manager.list_nodes())
        todo = self._todo(now, full=full)
        started = time.perf_counter()
        while todo:
            again: dict[str, Todo] = {}
            with self.manager.store.batch():
                for n, (job_id, what) in enumerate(todo.items()):
                    job = self.jobs.get(job_id)
                    if job is None:  # purged during a pause
                        continue
                    if n and time.perf_counter() - started >= SLICE:
                        again[job_id] = what  # after the pause, with the others
                        continue
                    self._slice_end, self._slice_placed = started + SLICE, 0
                    try:
                        if self.reconcile_job(job, views, now, derive=what.derive, lazy=what.lazy):
                            again[job_id] = Todo(set())  # cut by the slice: it goes on
                    except Exception as exc:
                        log.error("reconciling a job failed", job=job.id, exc=exc)
            if again:
                yield
                views = views.refreshed(self.manager.list_nodes())
                started = time.perf_counter()
            todo = again
        self._wake_at = self.changes.wake_at()
        if full:
            self.full_passes += 1
        if self.changes.unfinished:
            self.wake()  # more to place: the next pass goes on

    def _todo(self, now: datetime, *, full: bool) -> dict[str, Todo]:
        def jobs_on(node: str) -> Iterable[str]:
            return (self.allocs[a].job for a in self._by_node.get(node, {}))

        def system() -> Iterable[str]:
            return (j for j, job in self.jobs.items() if self._type(job) is JobType.SYSTEM)

        return self.changes.todo(
            self.jobs,
            self.manager.nodes,
            now,
            full=full,
            jobs_on=jobs_on,
            system=system,
            blocked=lambda: (job for job, _ in self._blocked),
            generation=self.manager.dispatcher.generation,
        )

    def _type(self, job: Job) -> JobType:
        return self.current_version(job).spec.type

    def reconcile_job(
        self,
        job: Job,
        views: PassViews,
        now: datetime,
        *,
        derive: Collection[str] | None = None,
        lazy: bool = False,
    ) -> bool:
        """Derive, reconcile and apply one job (placing on ``views``, which it updates).

        ``derive``: the allocations to derive (None: all); ``lazy``: stop there unless one
        of them changed. Returns whether the job's slice ended with placements left.
        """
        rest = self._rest.pop(job.id, None)
        if derive is not None and not derive and rest is not None and rest[0] == job.version:
            # The rest of a plan a slice (or pass) left, if nothing but time passed since: a
            # change of the job would have marked it for a whole reconcile (derive None).
            self._cut = False
            version = self.current_version(job)
            self._place_all(job, version, rest[1], rest[2], views, now, deployment=rest[3])
            return self._cut
        ids = self._by_job.get(job.id, {}) if derive is None else derive
        changed = False
        for alloc_id in list(ids):
            if (alloc := self.allocs.get(alloc_id)) is not None:
                changed |= self._derive(alloc, views, now)
        current = self.deployments.current(job)
        if lazy and not changed and (current is None or not current.active):
            return False  # (a deployment judges its allocations' health on any task change)
        allocs = self.allocations(job=job.id)
        advanced = self.deployments.advance(job, allocs, now)  # may revert: a new version
        deployment = advanced.deployment
        version = self.current_version(job)
        plan = reconcile(job, version, allocs, views.nodes, now, deployment=deployment)
        self._cut = False
        self._apply(job, version, plan, views, now, deployment=deployment)
        due = [t for t in (plan.wake_at, advanced.wake_at) if t is not None]
        self.changes.due(job.id, min(due, default=None))
        if (job.status, job.status_reason) != (plan.status, plan.status_reason):
            job.status, job.status_reason, job.updated_at = plan.status, plan.status_reason, now
            self.manager.store.save_job(job)
        return self._cut

    def _derive(self, alloc: Allocation, nodes: Mapping[str, Node], now: datetime) -> bool:
        """Bring the allocation's status and task records in line with its tasks.

        Returns whether the allocation's status changed."""
        if alloc.node is None or (alloc.is_terminal and alloc.status is not AllocStatus.LOST):
            return False
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
        moved = derived is not None and derived.status is not None
        if derived is not None and derived.status is not None:
            alloc.transition(derived.status, derived.reason, now=now)
            changed = True
            log.info("allocation", alloc=alloc.id, name=alloc.name, status=derived.status.value)
        if derived is not None:
            for task_id in derived.leftovers:
                self._stop_task(task_id, f"{alloc.name} {derived.status}: {derived.reason}")
        if changed:
            alloc.updated_at = now
            self.manager.store.save_allocations([alloc])
        return moved

    def _apply(
        self,
        job: Job,
        version: JobVersion,
        plan: Plan,
        views: PassViews,
        now: datetime,
        *,
        deployment: Deployment | None = None,
    ) -> None:
        spec = version.spec
        placed_by = deployment.id if deployment is not None else None
        for stop in plan.stop:
            self._stop_alloc(self.allocs[stop.alloc], stop.reason, lost=stop.lost, now=now)
        apply_rollout(self, plan, now)
        for update in plan.update:
            old = self.allocs[update.alloc]
            if old.node is not None and not self._may_place(job.id, update.group):
                continue  # the old one keeps running until its successor has somewhere to go
            if old.node is None:  # nothing runs yet: the waiting allocation takes the new spec
                group = spec.group(old.group)
                old.version, old.group_hash = version.number, group_hash(spec, group)
                self.manager.store.save_allocations([old])
                continue
            if not update.start_first:  # start-first: it runs until its successor is healthy
                self._stop_alloc(old, update.reason, lost=False, now=now)
            place = Place(
                update.group, update.index, update.reason, replaces=old.id, node=update.node
            )
            self._place(job, version, place, views, now, deployment=placed_by)
        for entry in plan.in_place:
            alloc = self.allocs[entry.alloc]
            alloc.version, alloc.updated_at = version.number, now
            self.manager.store.save_allocations([alloc])
        retries = [
            a.id
            for a in (self.allocs[keep.alloc] for keep in plan.keep)
            if a.node is None and not a.is_terminal and a.desired is AllocDesired.RUN
        ]
        self._place_all(job, version, plan.place, retries, views, now, deployment=placed_by)

    def _place_all(
        self,
        job: Job,
        version: JobVersion,
        places: list[Place],
        retries: list[str],
        views: PassViews,
        now: datetime,
        *,
        deployment: str | None = None,
    ) -> None:
        """Make the plan's placements, then retry its unplaced allocations, until the
        slice, the pass's budget or the send backlog says stop: what is left is kept
        for the next slice (see _rest)."""
        for n, place in enumerate(places):
            if not self._may_place(job.id, place.group):
                if self._cut or job.id in self.changes.unfinished:
                    self._rest[job.id] = (version.number, places[n:], retries, deployment)
                    return
                continue
            self._place(job, version, place, views, now, deployment=deployment)
        for n, alloc_id in enumerate(retries):
            alloc = self.allocs.get(alloc_id)
            if alloc is None or alloc.node is not None:
                continue
            if not self._may_place(job.id, alloc.group):
                if self._cut or job.id in self.changes.unfinished:
                    self._rest[job.id] = (version.number, [], retries[n:], deployment)
                    return
                continue
            self._retry(version, alloc, views)

    def _may_place(self, job: str, group: str) -> bool:
        """Whether a placement of ``group`` may be tried now: not blocked, and within the
        pass's budget, the send backlog and the job's slice (else the job is left for
        the next pass, or the next slice)."""
        blocked = self._blocked.get((job, group))
        if blocked is not None and blocked == self.manager.dispatcher.generation:
            return False
        if self._budget <= 0 or self.manager.dispatcher.sends_in_flight >= SEND_BACKLOG:
            self.changes.unfinished.add(job)
            return False
        if self._slice_placed and time.perf_counter() >= self._slice_end:
            self._cut = True
            return False
        return True

    @staticmethod
    def _update_places(plan: Plan) -> list[Place]:
        return [
            Place(u.group, u.index, u.reason, replaces=u.alloc, node=u.node) for u in plan.update
        ]

    # --- placing ------------------------------------------------------------------------------
    def _choose(
        self, spec: JobSpec, place: Place, views: PassViews, *, taken: Set[str]
    ) -> Decision:
        """A node for one allocation of ``place.group``, allocated on ``views`` if found.

        Nodes outside the job's datacenters are out; a system placement names its node;
        otherwise the nodes without a live allocation of the job (``taken``), nor the
        node ``place.avoid``, are tried first, then every node.
        """
        group = spec.group(place.group)
        request = self._request(spec, group)
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
            return Decision(node=None, algorithm=scheduler.algorithm, reason=reason)
        skip = passed_over(taken, avoid=place.avoid)
        decision = None
        if skip and len(skip) < len(eligible):
            decision = self.manager.telemetry.place(scheduler, request, eligible, skip=skip)
        if decision is None or decision.node is None:
            decision = self.manager.telemetry.place(scheduler, request, eligible)
        if decision.node is not None:
            views.replace(allocate(views[decision.node], request))
        return decision

    def _request(self, spec: JobSpec, group: GroupSpec) -> TaskSpec:
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

    def _hash(self, spec: JobSpec, group: GroupSpec) -> str:
        self._request(spec, group)
        return self._requests[(id(spec), group.name)][2]

    def _live_nodes(self, job: str) -> set[str]:
        """The nodes the job's live allocations are on."""
        return {
            a.node
            for a in map(self.allocs.__getitem__, self._by_job.get(job, {}))
            if a.node is not None and not a.is_terminal and a.desired is AllocDesired.RUN
        }

    def _place(
        self,
        job: Job,
        version: JobVersion,
        place: Place,
        views: PassViews,
        now: datetime,
        *,
        deployment: str | None = None,
    ) -> None:
        """Create the allocation ``place`` asks for and start it where the scheduler says."""
        spec = version.spec
        group = spec.group(place.group)
        alloc = Allocation(
            job=job.id,
            group=group.name,
            index=place.index,
            version=version.number,
            group_hash=self._hash(spec, group),
            reschedule_events=list(place.reschedule_events),
            replaces=place.replaces,
            deployment=deployment,
            canary=place.canary,
            created_at=now,
            updated_at=now,
        )
        alloc.tasks = {t.name: AllocTask(id=alloc_task_id(alloc.id, t.name)) for t in group.tasks}
        changed = [alloc]
        if place.replaces is not None and (old := self.allocs.get(place.replaces)) is not None:
            old.replaced_by = alloc.id
            changed.append(old)
        self._add(alloc)
        self._assign(spec, alloc, place, views, changed)

    def stop_alloc(self, alloc: Allocation, reason: str, *, now: datetime) -> None:
        """Stop an allocation (a deployment's successor that gives its slot back)."""
        self._stop_alloc(alloc, reason, lost=False, now=now)

    def _retry(self, version: JobVersion, alloc: Allocation, views: PassViews) -> None:
        """Try again to place an allocation that found no node before."""
        place = Place(alloc.group, alloc.index, "retry", avoid=None)
        self._assign(version.spec, alloc, place, views, [alloc])

    def _assign(
        self,
        spec: JobSpec,
        alloc: Allocation,
        place: Place,
        views: PassViews,
        changed: list[Allocation],
    ) -> None:
        self._budget -= 1
        self._slice_placed += 1
        taken = self._taken.get(alloc.job)
        if taken is None:
            taken = self._taken[alloc.job] = self._live_nodes(alloc.job)
        decision = self._choose(spec, place, views, taken=taken)
        alloc.placement = decision.model_dump(mode="json")
        if decision.node is None:
            self._blocked[(alloc.job, alloc.group)] = self.manager.dispatcher.generation
            alloc.status_reason = decision.reason
            self.manager.store.save_allocations(changed)
            return
        self._blocked.pop((alloc.job, alloc.group), None)
        taken.add(decision.node)
        alloc.node = decision.node
        self._by_node.setdefault(decision.node, {})[alloc.id] = None
        alloc.status_reason = f"placed on {decision.node}"
        self.manager.store.save_allocations(changed)  # the allocation first, then its tasks
        self._start_tasks(alloc, views[decision.node])
        log.info("allocation placed", alloc=alloc.id, name=alloc.name, node=decision.node)

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
            self._stop_task(t.id, reason)
        log.info("allocation stopping", alloc=alloc.id, name=alloc.name, reason=reason)

    def _stop_task(self, task_id: str, reason: str) -> None:
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

    def _stop_orphans(self) -> None:
        """Stop tasks whose allocation is unknown (purged, or a crash before it was saved),
        and forget them once stopped (a manager restarted during a purge)."""
        for task in list(self.manager.tasks.values()):
            if task.alloc is None or task.alloc.id in self.allocs:
                continue
            self._orphans.add(task.id)
            if not task.is_terminal and task.desired is DesiredState.RUN:
                self._stop_task(task.id, f"its allocation {task.alloc.name} is gone")

    def _forget_stopped_orphans(self) -> None:
        """Forget the tasks of purged allocations that have stopped, as Nomad's garbage
        collector does after ``nomad job stop -purge``: ``cube status`` lists them no
        more. One whose container may still run (its node was lost) stays until its node
        comes back and stops it: forgotten now, a copy there would be nobody's to stop."""
        for task_id in list(self._orphans):
            task = self.manager.tasks.get(task_id)
            if task is None or (task.alloc is not None and task.alloc.id in self.allocs):
                self._orphans.discard(task_id)
            elif task.is_terminal and task.container_id is None:
                self.manager.forget(task_id)
                self._orphans.discard(task_id)
