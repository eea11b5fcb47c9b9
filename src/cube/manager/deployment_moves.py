"""Deployments moved by hand: ``cube job promote``, ``pause``, ``resume``, ``fail`` and
``revert`` (``nomad deployment promote``, ``pause``, ``fail``; ``nomad job revert``).

Each takes the job's guard, makes its change on the job's draft as the pure decisions of
:mod:`cube.job.deploy` say (they raise Conflict when it may not be made), saves it,
shows it, and has the next pass reconcile the job. Ending a deployment and going back to
an earlier version are :class:`cube.manager.deployments.Deployments`' own steps, shared
with its automatic revert.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from cube.errors import Conflict, NotFound
from cube.job import deploy
from cube.job.deployment import Deployment, DeploymentStatus
from cube.job.model import Job
from cube.log import get_logger

if TYPE_CHECKING:
    from cube.manager.deployments import Deployments
    from cube.manager.job_drafts import JobDraft
    from cube.manager.jobs import JobService

log = get_logger("cube.manager.deployments")


class DeploymentMoves:
    """The by-hand moves of a job's deployment; see the module docstring."""

    def __init__(self, jobs: JobService, deployments: Deployments) -> None:
        self.jobs = jobs
        self.deployments = deployments

    async def promote(self, job_id: str, now: datetime) -> Deployment:
        return await self._by_hand(job_id, "promote", "promoted", deploy.promote, now)

    async def pause(self, job_id: str, now: datetime) -> Deployment:
        return await self._by_hand(job_id, "pause", "paused", deploy.pause, now)

    async def resume(self, job_id: str, now: datetime) -> Deployment:
        return await self._by_hand(job_id, "resume", "resumed", deploy.resume, now)

    async def _by_hand(
        self,
        job_id: str,
        what: str,
        done: str,
        decide: Callable[[Deployment, datetime], Deployment],
        now: datetime,
    ) -> Deployment:
        """Move the job's running deployment as ``decide`` says (it raises Conflict when it
        may not), save, show and log it, and have the next pass reconcile the job."""
        async with self.jobs.writes.change(job_id):
            draft = self.jobs.writes.draft(self.jobs.job(job_id))
            moved = decide(self._running(draft, what), now)
            draft.deployments[moved.id] = moved
            await self.jobs.writes.commit(draft)
        log.info(f"deployment {done}", job=job_id, version=moved.version)
        self.jobs.touch(job_id)
        return moved

    async def fail(self, job_id: str, now: datetime) -> Deployment:
        """Fail the running deployment by hand, and go back to the last good version."""
        async with self.jobs.writes.change(job_id):
            draft = self.jobs.writes.draft(self.jobs.job(job_id))
            d = self._running(draft, "fail")
            failed = deploy.fail(d, "failed by hand (cube job fail)", now)
            draft.deployments[failed.id] = failed
            version = draft.current_version()
            if deploy.revert_target(
                draft.job_versions(), self.deployments.of_job(job_id, draft), version
            ):
                self.deployments.revert_after(draft, failed, now)
            await self.jobs.writes.commit(draft)
        self.jobs.touch(job_id)
        return self.deployments.by_id[failed.id]

    async def revert(self, job_id: str, number: int | None, now: datetime) -> Job:
        """Go back to version ``number`` (None: the last whose deployment succeeded)."""
        async with self.jobs.writes.change(job_id):
            draft = self.jobs.writes.draft(self.jobs.job(job_id))
            current = draft.current_version()
            versions = draft.job_versions()
            if number is None:
                target = deploy.revert_target(versions, self.deployments.of_job(job_id), current)
                if target is None:
                    raise Conflict(
                        f"job {job_id} has no earlier version that deployed successfully"
                    )
            else:
                target = next((v for v in versions if v.number == number), None)
                if target is None:
                    raise NotFound(f"job {job_id} has no version {number}")
                if target.spec_hash == current.spec_hash:
                    raise Conflict(
                        f"version {number} of job {job_id} is what version {current.number}"
                        " runs already"
                    )
            d = self.deployments.current(draft.job)
            if d is not None and d.active:
                self.deployments.end(
                    draft,
                    d,
                    DeploymentStatus.ROLLED_BACK,
                    f"rolled back by hand to version {target.number}",
                    now,
                )
            self.deployments.go_back(draft, target, now)
            await self.jobs.writes.commit(draft)
        self.jobs.touch(job_id)
        return draft.job.model_copy(deep=True)

    def _running(self, draft: JobDraft, what: str) -> Deployment:
        d = self.deployments.current(draft.job, draft)
        if d is None or not d.active:
            state = "none" if d is None else f"version {d.version}'s is {d.status.title.lower()}"
            raise Conflict(f"job {draft.id} has no deployment running to {what} ({state})")
        return d
