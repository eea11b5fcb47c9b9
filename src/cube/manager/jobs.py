"""The manager's job service: the operations on jobs, over the parts that do the work.

A job's life, by the module that owns each part of it:

* :mod:`cube.manager.job_records`: every job, version and allocation, in memory and in
  the store (a restarted manager resumes every job where it was);
* :mod:`cube.manager.job_drafts`: every change of them, made on a draft, saved off the
  loop, then shown (a change the store refuses is never shown);
* this module: what the API asks (submit, scale, stop and purge, the dry run ``plan``,
  versions and allocations to read), each of which changes records and marks the job
  changed;
* :mod:`cube.manager.job_loop`: the level-triggered loop whose passes derive each
  changed job's allocations, reconcile it (:func:`cube.job.reconcile.reconcile`, pure)
  and hand the plan to
* :mod:`cube.manager.job_applier`: placements (:mod:`cube.manager.job_placement` picks
  the node), stops and store writes;
* :mod:`cube.manager.job_changes`: which jobs the next pass looks at;
* :mod:`cube.manager.job_orphans`: tasks whose allocation is gone;
* :mod:`cube.manager.deployments`: rolling updates and canaries.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cube.background import cancel_all
from cube.errors import Conflict, FieldError, InvalidSpec
from cube.job.blocked import PlacementFailure
from cube.job.model import Allocation, AllocDesired, Job, JobStatus, JobVersion, next_version
from cube.job.plan import Place, Plan
from cube.job.reconcile import reconcile
from cube.job.spec import JobSpec, JobType
from cube.log import get_logger
from cube.manager.deployment_moves import DeploymentMoves
from cube.manager.deployments import Deployments, apply_rollout
from cube.manager.job_applier import MAX_PLACEMENTS_PER_PASS, Applier
from cube.manager.job_changes import JobChanges
from cube.manager.job_drafts import JobWrites
from cube.manager.job_loop import JobLoop, utc_now
from cube.manager.job_orphans import Orphans
from cube.manager.job_placement import Placer
from cube.manager.job_records import JobRecords
from cube.manager.lookup import no_such_group
from cube.manager.pass_views import PassViews
from cube.scheduler import Decision
from cube.task.model import Task, short_task_id
from cube.task.spec import KEEP_SECRETS

if TYPE_CHECKING:
    from cube.manager.core import Manager

__all__ = ["RESERVED_JOB_NAMES", "JobService", "utc_now"]

log = get_logger("cube.manager.jobs")

#: Job names that are routes under ``/v1/jobs/`` (see cube.manager.jobs_api).
RESERVED_JOB_NAMES = frozenset({"plan"})


class JobService:
    """Jobs, versions and allocations of one manager, and the loop that drives them."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.records = records = JobRecords(manager.store)
        # The records' own dicts, by their old names (the dashboard, the deployments read them).
        self.jobs, self.versions, self.allocs = records.jobs, records.versions, records.allocs
        self.background: set[asyncio.Task[Any]] = set()
        self.changes = JobChanges(self.jobs)
        #: Deployments: kept, advanced each pass (cube.manager.deployments).
        self.deployments = Deployments(self)
        #: Promote, pause, resume, fail and revert by hand (cube.manager.deployment_moves).
        self.deployment_moves = DeploymentMoves(self, self.deployments)
        #: Every change of the records: saved off the loop, then shown.
        self.writes = JobWrites(
            manager.async_store, records, self.deployments, manager.node_registry
        )
        self.placer = Placer(manager, records)
        self.applier = Applier(
            manager,
            self.placer,
            self.changes,
            rollout=lambda draft, plan, now: apply_rollout(self, draft, plan, now),
            background=self.background,
        )
        self.orphans = Orphans(manager, records, self.applier.stop_task, self.background)
        self.loop = JobLoop(
            manager,
            records,
            self.changes,
            self.applier,
            self.orphans,
            self.deployments,
            self.writes,
        )
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        # Supervised like the manager's other loops: a crash restarts it and shows in health.
        self._task = self.manager.loops.start("jobs", self.loop.run)
        self.wake()

    async def close(self) -> None:
        await cancel_all([*([self._task] if self._task else []), *self.background])

    @property
    def passes(self) -> int:
        """Passes completed."""
        return self.loop.passes

    @property
    def full_passes(self) -> int:
        """Passes completed that looked at every job."""
        return self.loop.full_passes

    def wake(self) -> None:
        """Something changed (a node, the cluster's capacity): the next pass finds what."""
        self.loop.wake()

    def task_changed(self, task: Task) -> None:
        """A task of an allocation changed: the next pass derives its allocation again
        (or forgets the task, if its allocation was purged and it has stopped)."""
        if task.alloc is not None:
            if task.alloc.id in self.allocs:
                self.changes.alloc_changed(task.alloc.job, task.alloc.id)
            else:
                self.orphans.add([task.id])
            self.loop.wake()

    def touch(self, job_id: str) -> None:
        """Reconcile ``job_id`` in the next pass (it was submitted, scaled, stopped, or
        its deployment was moved by hand), and run that pass soon."""
        self.changes.job_changed(job_id)
        self.loop.wake()

    async def reconcile_all(self, now: datetime) -> None:
        """One pass over every job (tests)."""
        await self.loop.reconcile_all(now)

    # --- reading ------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job:
        return self.records.job(job_id)

    def current_version(self, job: Job) -> JobVersion:
        return self.records.current_version(job)

    def job_versions(self, job_id: str) -> list[JobVersion]:
        return self.records.job_versions(job_id)

    def allocations(self, *, job: str | None = None, node: str | None = None) -> list[Allocation]:
        return self.records.allocations(job=job, node=node)

    def allocation(self, alloc_id: str) -> Allocation:
        return self.records.allocation(alloc_id)

    def failures(self, job_id: str) -> dict[str, PlacementFailure]:
        """Group -> the placements of the job's last pass that found no node, and why."""
        return self.applier.blocks.failures(job_id)

    # --- the API's operations -----------------------------------------------------------------
    # Each is one draft of the job, under its guard: saved, then shown (cube.manager.job_drafts);
    # one the store refuses raises StoreUnavailable (503) and shows nothing.
    async def submit(self, spec: JobSpec) -> tuple[Job, bool]:
        """Store ``spec`` as the job's next version; False when it is the current one again."""
        if spec.job in RESERVED_JOB_NAMES:
            why = f"{spec.job!r} is reserved: POST /v1/jobs/{spec.job} is another route"
            raise InvalidSpec([FieldError("job", why)])
        async with self.writes.change(spec.job):
            now = utc_now()
            job = self.jobs.get(spec.job)
            current = self.current_version(job) if job is not None else None
            version = next_version(current, spec, now=now)
            if version is None and job is not None and not job.stopped:
                return job.model_copy(deep=True), False
            draft = self.writes.draft(job or Job(id=spec.job, created_at=now, updated_at=now))
            job = draft.job
            job.stopped = False
            job.updated_at = now
            if version is not None:
                job.version = version.number
                draft.versions.append(version)
            # Until the next pass judges it, the job is not what it was (Complete, Dead): a
            # client following the submit must not take the old status for the new version's.
            job.status, job.status_reason = JobStatus.PENDING, f"version {job.version} submitted"
            if spec.type is not JobType.BATCH:  # a new version, or a stopped one started again
                self.deployments.start(draft, now)
            await self.writes.commit(draft)
        log.info("job submitted", job=job.id, version=job.version)
        self.touch(job.id)
        return job.model_copy(deep=True), True

    async def scale(self, job_id: str, group: str, count: int) -> Job:
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
            raise no_such_group(spec, group) from None
        if spec.type is JobType.SYSTEM:
            raise InvalidSpec([FieldError("count", "a system job runs on every eligible node")])
        data = spec.model_dump(mode="json", context=KEEP_SECRETS)
        data["groups"][index]["count"] = count
        scaled, _ = await self.submit(JobSpec.model_validate(data))
        return scaled

    async def stop(self, job_id: str, *, purge: bool = False) -> Job:
        """Stop every allocation of the job; ``purge``: also forget it and its history."""
        async with self.writes.change(job_id):
            draft = self.writes.draft(self.job(job_id))
            draft.job.stopped = True
            draft.job.updated_at = utc_now()
            self.loop.reconcile_job(draft, PassViews(self.manager.list_nodes()), utc_now())
            draft.purge = purge
            task_ids = [t.id for a in draft.allocations() for t in a.tasks.values()]
            await self.writes.commit(draft)
        if purge:
            self._purged(job_id, task_ids)
        return draft.job.model_copy(deep=True)

    def _purged(self, job_id: str, task_ids: list[str]) -> None:
        """What a purge leaves once saved and shown: its tasks, stopped, are forgotten once
        they have stopped; nothing else waits for the job."""
        self.orphans.add(task_ids)
        self.orphans.forget_stopped()
        self.placer.forget_specs()  # built again as needed: forget the purged versions'
        self.applier.forget_job(job_id)
        log.info("job purged", job=job_id)

    def plan(self, spec: JobSpec) -> tuple[Plan, dict[str, Decision]]:
        """What submitting ``spec`` would do now, and where each placement would go.

        Nothing changes: the placements are tried on copies of the node views.
        """
        now = utc_now()
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
        taken = self.records.live_nodes(spec.job)  # grown by the dry run's own placements
        failed: dict[str, Decision] = {}  # group -> its first failure: the rest fail alike
        started_first = {u.alloc for u in plan.update if u.start_first}  # the old one runs on
        updates = [
            Place(u.group, u.index, u.reason, replaces=u.alloc, node=u.node) for u in plan.update
        ]
        for place in [*plan.place, *updates][:MAX_PLACEMENTS_PER_PASS]:
            if place.replaces is not None and place.replaces not in started_first:
                self.placer.release(place.replaces, views)  # stop, then start: it is free
            decision = None if place.replaces is not None else failed.get(place.group)
            if decision is None:
                decision = self.placer.choose(spec, place, views, taken=taken)
            if decision.node is None:
                failed[place.group] = decision
            decisions[f"{place.group}[{place.index}]"] = decision
            taken.update([decision.node] if decision.node else [])
        return plan, decisions

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
        if job is not None and self.records.job_type(job) is JobType.SYSTEM:
            # One copy per eligible node: no count to lower (scale refuses a system job).
            fewer = f"keep it off {alloc.node} with a constraint in the job's file"
        else:
            fewer = f"run fewer copies (cube job scale {alloc.job} {alloc.group} N)"
        raise Conflict(
            f"task {short_task_id(task.id)} is part of allocation {alloc.name}, which runs its"
            f" tasks together: stop the job (cube job stop {alloc.job}) or {fewer}"
        )
