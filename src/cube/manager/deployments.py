"""The manager's side of deployments: it keeps them, and saves what the pure decisions say.

Each job pass (:meth:`cube.manager.job_loop.JobLoop.reconcile_job`) calls :meth:`advance`
before it reconciles: it records each allocation's health (:func:`cube.job.deploy.judge_health`
from the manager's task records), cancels a deployment a newer version or a stop left
behind, makes the current version's deployment if it has none, brings it up to ``now``
(:func:`cube.job.deploy.step`), and when it has just failed with ``auto_revert``, goes
back to the last version whose deployment succeeded. The reconciler then reads the
deployment to know what it may replace.

Everything is in the store before it counts: a manager killed mid-deployment starts
again from the saved deployment and the allocations' saved verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cube.errors import Conflict, NotFound
from cube.job import deploy
from cube.job.deployment import Deployment, DeploymentStatus
from cube.job.model import Allocation, AllocDesired, AllocStatus, Job, JobStatus, JobVersion
from cube.job.plan import Plan
from cube.job.reconcile import NodeView
from cube.job.spec import JobType, update_policy
from cube.log import get_logger

if TYPE_CHECKING:
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
        self.store = jobs.manager.store
        self.by_id: dict[str, Deployment] = {}
        #: Job -> its deployments' IDs, oldest first (a pass reads one job's, not all).
        self.by_job: dict[str, list[str]] = {}
        for d in self.store.list_deployments():  # oldest first
            self.by_id[d.id] = d
            self.by_job.setdefault(d.job, []).append(d.id)

    # --- reading ------------------------------------------------------------------------------
    def of_job(self, job_id: str) -> list[Deployment]:
        """The job's deployments, oldest first."""
        return [self.by_id[i] for i in self.by_job.get(job_id, ())]

    def current(self, job: Job) -> Deployment | None:
        """The deployment of the job's current version (the newest, if there were several)."""
        for i in reversed(self.by_job.get(job.id, ())):
            if self.by_id[i].version == job.version:
                return self.by_id[i]
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
        return self._fresh(job, version, allocs, now)

    def start(self, job: Job, allocs: list[Allocation], now: datetime) -> Deployment:
        """A new deployment of the current version, made as it is submitted (or a stopped
        job started again with the same file): the API shows it, and ``promote`` or
        ``pause`` find it, before the next pass. A deployment of another version still
        running is cancelled."""
        self._cancel_others(job, now)
        d = self._fresh(job, self.jobs.current_version(job), allocs, now)
        self._save(d)
        log.info("deployment started", job=job.id, version=job.version, deployment=d.id)
        return d

    def _cancel_others(self, job: Job, now: datetime) -> None:
        for old in self.of_job(job.id):
            if old.active and (job.stopped or old.version != job.version):
                why = "the job was stopped" if job.stopped else f"version {job.version} replaced it"
                self._end(old, DeploymentStatus.CANCELLED, why, now)

    def _fresh(
        self, job: Job, version: JobVersion, allocs: list[Allocation], now: datetime
    ) -> Deployment:
        earlier = self.of_job(job.id)
        return deploy.new_deployment(
            version,
            allocs,
            from_version=earlier[-1].version if earlier else None,
            revert=False,
            now=now,
        )

    def forget(self, job_id: str) -> None:
        """Drop a purged job's deployments (the store purged them with the job)."""
        for i in self.by_job.pop(job_id, ()):
            self.by_id.pop(i, None)

    def _save(self, d: Deployment) -> None:
        self.store.save_deployment(d)
        if d.id not in self.by_id:
            self.by_job.setdefault(d.job, []).append(d.id)
        self.by_id[d.id] = d

    # --- the pass -----------------------------------------------------------------------------
    def advance(
        self,
        job: Job,
        allocs: list[Allocation],
        now: datetime,
        nodes: Mapping[str, NodeView] | None = None,
    ) -> Advanced:
        """Bring the job's deployments up to ``now``: the current version's (or None, for a
        batch job), and when to look again.

        ``allocs``: the job's allocations (the records themselves: health is recorded on them);
        ``nodes``: the pass's node views (a system job wants one allocation per eligible node).
        """
        self._cancel_others(job, now)
        version = self.jobs.current_version(job)
        if job.stopped or version.spec.type is JobType.BATCH:
            return Advanced(None)
        health_due = self._judge(version, allocs, now)
        d = self.current(job)
        if d is None:
            d = self.start(job, allocs, now)
        if not d.active:
            return Advanced(d, health_due)
        stepped = deploy.step(d, version.spec, allocs, now, nodes)
        if stepped != d:
            self._save(stepped)
            if not stepped.active:
                log.info(
                    "deployment ended",
                    job=job.id,
                    version=d.version,
                    status=stepped.status.value,
                    reason=stepped.status_reason,
                )
        if stepped.status is DeploymentStatus.FAILED and not stepped.revert:
            policies = [update_policy(version.spec, g) for g in version.spec.groups]
            if any(p.auto_revert for p in policies):
                return Advanced(self._revert_after(job, stepped, allocs, now), health_due)
        if not stepped.active:
            return Advanced(stepped, health_due)
        spec = version.spec
        deadline = min(update_policy(spec, g).progress_deadline for g in spec.groups)
        return Advanced(
            stepped, _earliest(health_due, stepped.progress_at + timedelta(seconds=deadline))
        )

    def _judge(
        self, version: JobVersion, allocs: list[Allocation], now: datetime
    ) -> datetime | None:
        """Record each allocation's readiness and health verdict, as the current policy says;
        returns the earliest moment a verdict may change by itself."""
        spec = version.spec
        groups = {g.name: g for g in spec.groups}
        changed = []
        due: datetime | None = None
        for alloc in allocs:
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
                alloc.ready_since, alloc.healthy = mark.ready_since, mark.healthy
                changed.append(alloc)
                if mark.healthy is not None:
                    log.info(
                        "allocation health", alloc=alloc.id, name=alloc.name, healthy=mark.healthy
                    )
            due = _earliest(due, deploy.health_due(alloc, policy))
        if changed:
            self.store.save_allocations(changed)
        return due

    def _end(self, d: Deployment, status: DeploymentStatus, reason: str, now: datetime) -> None:
        ended = d.model_copy(update={"status": status, "status_reason": reason, "updated_at": now})
        if not status.active and ended.finished_at is None:
            ended.finished_at = now
        self._save(ended)
        log.info(
            "deployment ended", job=d.job, version=d.version, status=status.value, reason=reason
        )

    # --- operations ---------------------------------------------------------------------------
    def promote(self, job_id: str, now: datetime) -> Deployment:
        return self._by_hand(job_id, "promote", "promoted", deploy.promote, now)

    def pause(self, job_id: str, now: datetime) -> Deployment:
        return self._by_hand(job_id, "pause", "paused", deploy.pause, now)

    def resume(self, job_id: str, now: datetime) -> Deployment:
        return self._by_hand(job_id, "resume", "resumed", deploy.resume, now)

    def _by_hand(
        self,
        job_id: str,
        what: str,
        done: str,
        decide: Callable[[Deployment, datetime], Deployment],
        now: datetime,
    ) -> Deployment:
        """Move the job's running deployment as ``decide`` says (it raises Conflict when it
        may not), save and log it, and have the next pass reconcile the job."""
        moved = decide(self._running(job_id, what), now)
        self._save(moved)
        log.info(f"deployment {done}", job=job_id, version=moved.version)
        self.jobs.touch(job_id)
        return moved

    def fail(self, job_id: str, now: datetime) -> Deployment:
        """Fail the running deployment by hand, and go back to the last good version."""
        job = self.jobs.job(job_id)
        d = self._running(job_id, "fail")
        failed = deploy.fail(d, "failed by hand (cube job fail)", now)
        self._save(failed)
        version = self.jobs.current_version(job)
        if deploy.revert_target(self.jobs.job_versions(job_id), self.of_job(job_id), version):
            self._revert_after(job, failed, self.jobs.allocations(job=job_id), now)
        self.jobs.touch(job_id)
        return self.by_id[failed.id]

    def revert(self, job_id: str, number: int | None, now: datetime) -> Job:
        """Go back to version ``number`` (None: the last whose deployment succeeded)."""
        job = self.jobs.job(job_id)
        current = self.jobs.current_version(job)
        versions = self.jobs.job_versions(job_id)
        if number is None:
            target = deploy.revert_target(versions, self.of_job(job_id), current)
            if target is None:
                raise Conflict(f"job {job_id} has no earlier version that deployed successfully")
        else:
            target = next((v for v in versions if v.number == number), None)
            if target is None:
                raise NotFound(f"job {job_id} has no version {number}")
            if target.spec_hash == current.spec_hash:
                raise Conflict(
                    f"version {number} of job {job_id} is what version {current.number}"
                    " runs already"
                )
        d = self.current(job)
        if d is not None and d.active:
            self._end(
                d,
                DeploymentStatus.ROLLED_BACK,
                f"rolled back by hand to version {target.number}",
                now,
            )
        self._go_back(job, target, self.jobs.allocations(job=job_id), now)
        self.jobs.touch(job_id)
        return job.model_copy(deep=True)

    def _running(self, job_id: str, what: str) -> Deployment:
        job = self.jobs.job(job_id)
        d = self.current(job)
        if d is None or not d.active:
            state = "none" if d is None else f"version {d.version}'s is {d.status.title.lower()}"
            raise Conflict(f"job {job_id} has no deployment running to {what} ({state})")
        return d

    def _revert_after(
        self, job: Job, failed: Deployment, allocs: list[Allocation], now: datetime
    ) -> Deployment | None:
        """Auto-revert (or ``fail``): back to the last good version, if there is one."""
        current = self.jobs.current_version(job)
        target = deploy.revert_target(self.jobs.job_versions(job.id), self.of_job(job.id), current)
        if target is None:
            return failed
        self._end(
            failed,
            DeploymentStatus.ROLLED_BACK,
            f"{failed.status_reason}; rolled back to version {target.number}",
            now,
        )
        return self._go_back(job, target, allocs, now)

    def _go_back(
        self, job: Job, target: JobVersion, allocs: list[Allocation], now: datetime
    ) -> Deployment:
        """A new version with ``target``'s spec, and its deployment: a revert, no canaries."""
        current = self.jobs.current_version(job)
        back = JobVersion.of(target.spec, current.number + 1, now=now)
        job.version, job.updated_at = back.number, now
        job.status = JobStatus.PENDING
        job.status_reason = f"version {back.number}: back to version {target.number}"
        self.store.save_job(job, [back])
        self.jobs.versions.setdefault(job.id, {})[back.number] = back
        d = deploy.new_deployment(
            back,
            allocs,
            from_version=current.number,
            revert=True,
            now=now,
        )
        d.status_reason = f"reverting to version {target.number}"
        self._save(d)
        log.info("job reverted", job=job.id, to=target.number, version=back.number)
        return d


def apply_rollout(jobs: JobService, plan: Plan, now: datetime) -> None:
    """Carry out the plan's reclaims and promotions: record changes, and one stop each."""
    for reclaim in plan.reclaim:
        back = jobs.allocs[reclaim.alloc]
        # Its spec is the current version's (that is why it takes the slot back).
        back.replaced_by, back.version, back.updated_at = None, plan.version, now
        jobs.manager.store.save_allocations([back])
        if reclaim.stop is not None:
            jobs.stop_alloc(jobs.allocs[reclaim.stop], reclaim.reason, now=now)
        log.info("allocation takes its slot back", alloc=back.id, name=back.name)
    for promote in plan.promote:
        canary = jobs.allocs[promote.alloc]
        canary.canary, canary.replaces, canary.updated_at = False, promote.replaces, now
        changed = [canary]
        if promote.replaces is not None:
            old = jobs.allocs[promote.replaces]
            old.replaced_by, old.updated_at = canary.id, now
            changed.append(old)
        jobs.manager.store.save_allocations(changed)
        log.info("canary promoted", alloc=canary.id, name=canary.name)
