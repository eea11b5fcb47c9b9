"""The manager's side of deployments: it keeps them, and saves what the pure decisions say.

Each job pass (:meth:`cube.manager.job_loop.JobLoop.reconcile_job`) calls :meth:`advance`
before it reconciles: it records each allocation's health (:func:`cube.job.deploy.judge_health`
from the manager's task records), cancels a deployment a newer version or a stop left
behind, makes the current version's deployment if it has none, brings it up to ``now``
(:func:`cube.job.deploy.step`), and when it has just failed with ``auto_revert``, goes
back to the last version whose deployment succeeded. The reconciler then reads the
deployment to know what it may replace. The moves a user makes by hand (promote, pause,
fail, revert...) are in :mod:`cube.manager.deployment_moves`.

Everything is in the store before it counts: each change is made on the job's draft
(:mod:`cube.manager.job_drafts`), saved, then shown (:meth:`Deployments.publish`), so a
manager killed mid-deployment starts again from the saved deployment and the allocations'
saved verdicts, and a change the store refuses is never shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cube.errors import NotFound
from cube.job import deploy
from cube.job.deployment import Deployment, DeploymentStatus
from cube.job.eligibility import NodeView
from cube.job.model import Allocation, AllocDesired, AllocStatus, Job, JobStatus, JobVersion
from cube.job.plan import Plan
from cube.job.spec import JobType, update_policy
from cube.log import get_logger

if TYPE_CHECKING:
    from cube.manager.job_drafts import JobDraft
    from cube.manager.jobs import JobService

log = get_logger("cube.manager.deployments")


def _earliest(*times: datetime | None) -> datetime | None:
    return min((t for t in times if t is not None), default=None)


@dataclass(frozen=True)
class Advanced:
    """What :meth:`Deployments.advance` did to one job."""

    #: The current version's deployment (None: a batch job, or a stopped one).
    deployment: Deployment | None
    #: The earliest moment the deployment or an allocation's health may change with no
    #: other change (an allocation ready for ``min_healthy_time``, a deadline): the job
    #: pass must look again then, not at the next report or safety pass.
    wake_at: datetime | None = None


class Deployments:
    """Every deployment of one manager's jobs, and the steps that move them."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.by_id: dict[str, Deployment] = {}
        #: Job -> its deployments' IDs, oldest first (a pass reads one job's, not all).
        self.by_job: dict[str, list[str]] = {}
        for d in jobs.manager.store.list_deployments():  # oldest first, read once at start
            self.by_id[d.id] = d
            self.by_job.setdefault(d.job, []).append(d.id)

    # --- reading ------------------------------------------------------------------------------
    def of_job(self, job_id: str, draft: JobDraft | None = None) -> list[Deployment]:
        """The job's deployments, oldest first (as ``draft`` has them, if given)."""
        shown = [self.by_id[i] for i in self.by_job.get(job_id, ())]
        if draft is None or not draft.deployments:
            return shown
        changed = draft.deployments
        new = [d for i, d in changed.items() if i not in self.by_id]
        return [changed.get(d.id, d) for d in shown] + new

    def current(self, job: Job, draft: JobDraft | None = None) -> Deployment | None:
        """The deployment of the job's current version (the newest, if there were several)."""
        for d in reversed(self.of_job(job.id, draft)):
            if d.version == job.version:
                return d
        return None

    def get(self, deployment_id: str) -> Deployment:
        found = self.by_id.get(deployment_id)
        if found is None:
            matches = [d for i, d in self.by_id.items() if i.startswith(deployment_id)]
            if len(matches) != 1:
                raise NotFound(f"deployment {deployment_id} not found")
            found = matches[0]
        return found

    def preview(
        self, job: Job, version: JobVersion, allocs: list[Allocation], now: datetime
    ) -> Deployment | None:
        """The deployment a dry run of ``version`` reconciles with: the current one for the
        current version, else the one a submit would start (not saved)."""
        if version.spec.type is JobType.BATCH:
            return None
        if version.number == job.version and (d := self.current(job)) is not None:
            return d
        return self._fresh(self.of_job(job.id), version, allocs, now)

    def start(self, draft: JobDraft, now: datetime) -> Deployment:
        """A new deployment of the current version, made as it is submitted (or a stopped
        job started again with the same file): the API shows it, and ``promote`` or
        ``pause`` find it, before the next pass. A deployment of another version still
        running is cancelled."""
        self._cancel_others(draft, now)
        job = draft.job
        earlier = self.of_job(job.id, draft)
        d = self._fresh(earlier, draft.current_version(), draft.allocations(), now)
        draft.deployments[d.id] = d
        draft.then(
            lambda: log.info("deployment started", job=job.id, version=job.version, deployment=d.id)
        )
        return d

    def _cancel_others(self, draft: JobDraft, now: datetime) -> None:
        job = draft.job
        for old in self.of_job(job.id, draft):
            if old.active and (job.stopped or old.version != job.version):
                why = "the job was stopped" if job.stopped else f"version {job.version} replaced it"
                self.end(draft, old, DeploymentStatus.CANCELLED, why, now)

    @staticmethod
    def _fresh(
        earlier: list[Deployment], version: JobVersion, allocs: list[Allocation], now: datetime
    ) -> Deployment:
        return deploy.new_deployment(
            version,
            allocs,
            from_version=earlier[-1].version if earlier else None,
            revert=False,
            now=now,
        )

    # --- changes: published once saved -------------------------------------------------------
    def publish(self, draft: JobDraft) -> None:
        """Show the deployments of a saved change (none of a purged job's)."""
        if draft.purge:
            self.reload(draft.id, [])
            return
        for d in draft.deployments.values():
            if d.id not in self.by_id:
                self.by_job.setdefault(d.job, []).append(d.id)
            self.by_id[d.id] = d

    def reload(self, job_id: str, deployments: Iterable[Deployment]) -> None:
        """The job's deployments as the store holds them, oldest first."""
        for i in self.by_job.pop(job_id, ()):
            self.by_id.pop(i, None)
        for d in deployments:
            self.by_id[d.id] = d
            self.by_job.setdefault(job_id, []).append(d.id)

    # --- the pass -----------------------------------------------------------------------------
    def advance(
        self, draft: JobDraft, now: datetime, nodes: Mapping[str, NodeView] | None = None
    ) -> Advanced:
        """Bring the job's deployments up to ``now``: the current version's (or None, for a
        batch job), and when to look again. Health is recorded on the draft's allocations;
        ``nodes``: the pass's node views (a system job wants one allocation per eligible node).
        """
        job = draft.job
        self._cancel_others(draft, now)
        version = draft.current_version()
        if job.stopped or version.spec.type is JobType.BATCH:
            return Advanced(None)
        health_due = self._judge(draft, version, now)
        allocs = draft.allocations()
        d = self.current(job, draft)
        if d is None:
            d = self.start(draft, now)
        if not d.active:
            return Advanced(d, health_due)
        stepped = deploy.step(d, version.spec, allocs, now, nodes)
        if stepped != d:
            draft.deployments[stepped.id] = stepped
            if not stepped.active:
                draft.then(
                    lambda: log.info(
                        "deployment ended",
                        job=job.id,
                        version=d.version,
                        status=stepped.status.value,
                        reason=stepped.status_reason,
                    )
                )
        if stepped.status is DeploymentStatus.FAILED and not stepped.revert:
            policies = [update_policy(version.spec, g) for g in version.spec.groups]
            if any(p.auto_revert for p in policies):
                return Advanced(self.revert_after(draft, stepped, now), health_due)
        if not stepped.active:
            return Advanced(stepped, health_due)
        spec = version.spec
        deadline = min(update_policy(spec, g).progress_deadline for g in spec.groups)
        return Advanced(
            stepped, _earliest(health_due, stepped.progress_at + timedelta(seconds=deadline))
        )

    def _judge(self, draft: JobDraft, version: JobVersion, now: datetime) -> datetime | None:
        """Record each allocation's readiness and health verdict, as the current policy says;
        returns the earliest moment a verdict may change by itself."""
        spec = version.spec
        groups = {g.name: g for g in spec.groups}
        due: datetime | None = None
        for alloc in draft.allocations():
            if (
                alloc.group not in groups
                or alloc.desired is not AllocDesired.RUN
                or alloc.healthy is not None
                or (alloc.is_terminal and alloc.status is not AllocStatus.FAILED)
            ):
                continue
            policy = update_policy(spec, groups[alloc.group])
            tasks = {n: self.jobs.manager.tasks.get(t.id) for n, t in alloc.tasks.items()}
            mark = deploy.judge_health(alloc, deploy.is_ready(alloc, tasks), policy, now)
            if (mark.ready_since, mark.healthy) != (alloc.ready_since, alloc.healthy):
                alloc = draft.edit(alloc.id)
                alloc.ready_since, alloc.healthy = mark.ready_since, mark.healthy
                if mark.healthy is not None:
                    log.info(
                        "allocation health", alloc=alloc.id, name=alloc.name, healthy=mark.healthy
                    )
            due = _earliest(due, deploy.health_due(alloc, policy))
        return due

    def end(
        self, draft: JobDraft, d: Deployment, status: DeploymentStatus, reason: str, now: datetime
    ) -> None:
        """End ``d`` in ``draft`` with ``status`` (cancelled, failed, rolled back...)."""
        ended = d.model_copy(update={"status": status, "status_reason": reason, "updated_at": now})
        if not status.active and ended.finished_at is None:
            ended.finished_at = now
        draft.deployments[ended.id] = ended
        draft.then(
            lambda: log.info(
                "deployment ended", job=d.job, version=d.version, status=status.value, reason=reason
            )
        )

    # --- going back ----------------------------------------------------------------------------
    def revert_after(self, draft: JobDraft, failed: Deployment, now: datetime) -> Deployment:
        """Auto-revert (or ``fail``): back to the last good version, if there is one."""
        current = draft.current_version()
        earlier = self.of_job(draft.id, draft)
        target = deploy.revert_target(draft.job_versions(), earlier, current)
        if target is None:
            return failed
        self.end(
            draft,
            failed,
            DeploymentStatus.ROLLED_BACK,
            f"{failed.status_reason}; rolled back to version {target.number}",
            now,
        )
        return self.go_back(draft, target, now)

    def go_back(self, draft: JobDraft, target: JobVersion, now: datetime) -> Deployment:
        """A new version with ``target``'s spec, and its deployment: a revert, no canaries."""
        job = draft.job
        current = draft.current_version()
        back = JobVersion.of(target.spec, current.number + 1, now=now)
        job.version, job.updated_at = back.number, now
        job.status = JobStatus.PENDING
        job.status_reason = f"version {back.number}: back to version {target.number}"
        draft.versions.append(back)
        d = deploy.new_deployment(
            back,
            draft.allocations(),
            from_version=current.number,
            revert=True,
            now=now,
        )
        d.status_reason = f"reverting to version {target.number}"
        draft.deployments[d.id] = d
        draft.then(
            lambda: log.info("job reverted", job=job.id, to=target.number, version=back.number)
        )
        return d


def apply_rollout(jobs: JobService, draft: JobDraft, plan: Plan, now: datetime) -> None:
    """Carry out the plan's reclaims and promotions on the job's draft: record changes, and
    one stop each."""
    for reclaim in plan.reclaim:
        back = draft.edit(reclaim.alloc)
        # Its spec is the current version's (that is why it takes the slot back).
        back.replaced_by, back.version, back.updated_at = None, plan.version, now
        if reclaim.stop is not None:
            jobs.applier.stop_alloc(draft, reclaim.stop, reclaim.reason, now=now)
        log.info("allocation takes its slot back", alloc=back.id, name=back.name)
    for promote in plan.promote:
        canary = draft.edit(promote.alloc)
        canary.canary, canary.replaces, canary.updated_at = False, promote.replaces, now
        if promote.replaces is not None:
            old = draft.edit(promote.replaces)
            old.replaced_by, old.updated_at = canary.id, now
        log.info("canary promoted", alloc=canary.id, name=canary.name)
