"""The manager's HTTP routes for jobs and allocations (``/v1/jobs``, ``/v1/allocations``).

::

    POST   /v1/jobs                  submit a job file (JSON or YAML): 201 new version, 200 same
    GET    /v1/jobs                  every job
    POST   /v1/jobs/plan             what a submit would do now; changes nothing
    GET    /v1/jobs/{id}             one job, with its current spec
    DELETE /v1/jobs/{id}             stop every allocation (?purge=true: and forget the job)
    GET    /v1/jobs/{id}/versions    every submitted version, oldest first
    GET    /v1/jobs/{id}/history     every version with its changes and deployment status
    POST   /v1/jobs/{id}/scale       {"group": "web", "count": 5}: a new version, count only
    GET    /v1/jobs/{id}/deployments the job's deployments, oldest first
    POST   /v1/jobs/{id}/promote     promote the running deployment's canaries
    POST   /v1/jobs/{id}/pause       pause the running deployment (/resume: go on)
    POST   /v1/jobs/{id}/fail        fail the running deployment, and go back to the last good
    POST   /v1/jobs/{id}/revert      {"version": 2} (or {}: the last good one): a new version
    GET    /v1/deployments/{id}      one deployment (a unique ID prefix works too)
    GET    /v1/allocations           every allocation (?job=shop, ?node=w1)
    GET    /v1/allocations/{id}      one allocation (a unique ID prefix works too)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from cube.api.body import read_body
from cube.job.blocked import blocked_status, failures_of
from cube.job.deployment import Deployment
from cube.job.history import changes
from cube.job.model import Allocation, Job, JobVersion
from cube.job.parse import parse_job
from cube.job.plan import Plan
from cube.job.spec import JobSpec, JobType
from cube.job.wire import (
    HistoryEntry,
    JobDetail,
    JobPlan,
    PlanEntry,
    RevertRequest,
    ScaleRequest,
)
from cube.manager.jobs import JobService, utc_now
from cube.scheduler import Decision


class JobIdConvertor(StringConvertor):
    """A job ID in a path: any segment but ``plan``, which is ``POST /v1/jobs/plan``.

    Without it ``/v1/jobs/plan`` would also be job "plan" (a 405 there would list GET and
    DELETE); a job may not be named ``plan`` (:data:`cube.manager.jobs.RESERVED_JOB_NAMES`).
    """

    regex = "(?!plan(?:/|$))[^/]+"


register_url_convertor("jobid", JobIdConvertor())

#: OpenAPI description of a job file body (read by hand: JSON or YAML).
JOB_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
        },
    }
}


def plan_entries(
    plan: Plan, decisions: dict[str, Decision], allocs: Mapping[str, Allocation]
) -> list[PlanEntry]:
    """The plan as the API shows it. An entry about an allocation that stays where it is
    (keep, stop, in place...) names its slot and node, read from ``allocs``: `cube job
    plan` showed ``keep  -  a1b2c3  -`` for each allocation running."""
    entries = _plan_entries(plan, decisions)
    for e in entries:
        alloc = allocs.get(e.alloc) if e.alloc is not None else None
        if alloc is None:
            continue
        if e.group is None:
            e.group, e.index = alloc.group, alloc.index
        if e.action not in ("place", "update"):  # those name the node they would go to
            e.node = alloc.node
    return entries


def _plan_entries(plan: Plan, decisions: dict[str, Decision]) -> list[PlanEntry]:
    entries: list[PlanEntry] = []
    for p in plan.place:
        d = decisions.get(f"{p.group}[{p.index}]")
        entries.append(
            PlanEntry(
                action="place",
                reason=p.reason if d is None or d.node else f"{p.reason}; cannot: {d.reason}",
                group=p.group,
                index=p.index,
                alloc=p.replaces,
                node=d.node if d else None,
                placement=d,
            )
        )
    entries += [PlanEntry(action="stop", reason=s.reason, alloc=s.alloc) for s in plan.stop]
    for u in plan.update:
        d = decisions.get(f"{u.group}[{u.index}]")
        entries.append(
            PlanEntry(
                action="update",
                reason=u.reason,
                group=u.group,
                index=u.index,
                alloc=u.alloc,
                node=d.node if d else None,
                placement=d,
            )
        )
    entries += [PlanEntry(action="inplace", reason=i.reason, alloc=i.alloc) for i in plan.in_place]
    entries += [PlanEntry(action="reclaim", reason=r.reason, alloc=r.alloc) for r in plan.reclaim]
    entries += [PlanEntry(action="promote", reason=p.reason, alloc=p.alloc) for p in plan.promote]
    entries += [
        PlanEntry(action="wait", reason=w.reason, group=w.group, index=w.index, alloc=w.alloc)
        for w in plan.wait
    ]
    entries += [PlanEntry(action="keep", reason=k.reason, alloc=k.alloc) for k in plan.keep]
    return entries


def install_job_routes(app: FastAPI, jobs: JobService) -> None:
    """Add the job and allocation routes to the manager's app."""

    async def read_job(request: Request) -> JobSpec:
        return parse_job(await read_body(request))

    @app.post(
        "/v1/jobs",
        status_code=201,
        openapi_extra=JOB_BODY,
        responses={200: {"model": Job, "description": "The current spec again: nothing changes."}},
    )
    async def submit_job(request: Request, response: Response) -> Job:
        """Submit a job file. 201: a new version; 200: the current spec again, nothing changes."""
        job, created = await jobs.submit(await read_job(request))
        if not created:
            response.status_code = 200
        return job

    @app.get("/v1/jobs")
    async def list_jobs() -> list[Job]:
        return [jobs.jobs[j] for j in sorted(jobs.jobs)]

    @app.post("/v1/jobs/plan", openapi_extra=JOB_BODY)
    async def plan_job(request: Request) -> JobPlan:
        """A dry run of a submit against the cluster as it is: nothing is created or changed."""
        spec = await read_job(request)
        plan, decisions = jobs.plan(spec)
        entries = plan_entries(plan, decisions, jobs.allocs)
        failures = failures_of((e.group or "", e.placement) for e in entries if e.placement)
        allocs = jobs.allocations(job=plan.job)
        status, reason = blocked_status(spec, plan.status, plan.status_reason, allocs, failures)
        return JobPlan(
            job=plan.job,
            version=plan.version,
            status=status.value,
            status_reason=reason,
            entries=entries,
            unplaceable=sum(1 for d in decisions.values() if d.node is None),
            placement_failures=failures,
        )

    @app.get("/v1/jobs/{job_id:jobid}")
    async def get_job(job_id: str) -> JobDetail:
        job = jobs.job(job_id)
        return JobDetail(
            job=job,
            spec=jobs.current_version(job).spec,
            allocations=jobs.allocations(job=job.id),
            deployment=jobs.deployments.current(job),
            placement_failures=jobs.failures(job.id),
        )

    @app.delete("/v1/jobs/{job_id:jobid}")
    async def stop_job(job_id: str, purge: bool = False) -> Job:
        return await jobs.stop(job_id, purge=purge)

    @app.get("/v1/jobs/{job_id:jobid}/versions")
    async def job_versions(job_id: str) -> list[JobVersion]:
        return jobs.job_versions(job_id)

    @app.post("/v1/jobs/{job_id:jobid}/scale")
    async def scale_job(job_id: str, body: ScaleRequest) -> Job:
        return await jobs.scale(job_id, body.group, body.count)

    @app.get("/v1/jobs/{job_id:jobid}/history")
    async def job_history(job_id: str) -> list[HistoryEntry]:
        """Every version, oldest first, with the fields it changed and its deployment's end."""
        versions = jobs.job_versions(job_id)
        last = {d.version: d for d in jobs.deployments.of_job(job_id)}
        return [
            HistoryEntry(
                version=v.number,
                submitted_at=v.submitted_at,
                spec_hash=v.spec_hash,
                groups={
                    g.name: None if v.spec.type is JobType.SYSTEM else g.wanted
                    for g in v.spec.groups
                },
                changes=diff,
                deployment=last[v.number].status.value if v.number in last else None,
                deployment_reason=last[v.number].status_reason if v.number in last else None,
            )
            for v, diff in zip(versions, changes(versions), strict=True)
        ]

    @app.get("/v1/jobs/{job_id:jobid}/deployments")
    async def job_deployments(job_id: str) -> list[Deployment]:
        jobs.job(job_id)
        return jobs.deployments.of_job(job_id)

    @app.post("/v1/jobs/{job_id:jobid}/promote")
    async def promote_job(job_id: str) -> Deployment:
        """Promote the canaries of the running deployment: the rolling update goes on."""
        return await jobs.deployment_moves.promote(job_id, utc_now())

    @app.post("/v1/jobs/{job_id:jobid}/pause")
    async def pause_job(job_id: str) -> Deployment:
        """Pause the running deployment: nothing more is replaced, no deadline runs."""
        return await jobs.deployment_moves.pause(job_id, utc_now())

    @app.post("/v1/jobs/{job_id:jobid}/resume")
    async def resume_job(job_id: str) -> Deployment:
        """Resume a paused deployment; its progress_deadline counts from now."""
        return await jobs.deployment_moves.resume(job_id, utc_now())

    @app.post("/v1/jobs/{job_id:jobid}/fail")
    async def fail_job(job_id: str) -> Deployment:
        """Fail the running deployment; its canaries stop, the job goes back to its last
        version that deployed successfully (if any)."""
        return await jobs.deployment_moves.fail(job_id, utc_now())

    @app.post("/v1/jobs/{job_id:jobid}/revert")
    async def revert_job(job_id: str, body: RevertRequest) -> Job:
        """A new version with an earlier version's spec; its deployment has no canaries."""
        return await jobs.deployment_moves.revert(job_id, body.version, utc_now())

    @app.get("/v1/deployments/{deployment_id}")
    async def get_deployment(deployment_id: str) -> Deployment:
        return jobs.deployments.get(deployment_id)

    @app.get("/v1/allocations")
    async def list_allocations(job: str | None = None, node: str | None = None) -> list[Allocation]:
        """A job or node the cluster does not know is a 404 (``job shpo not found; did you
        mean 'shop'?``), not an empty list that reads as "nothing runs there"."""
        if job is not None:
            jobs.job(job)  # NotFound
        allocs = jobs.allocations(job=job, node=node)
        if node is not None and not allocs:  # a forgotten node's allocations still list
            jobs.manager.get_node(node)
        return allocs

    @app.get("/v1/allocations/{alloc_id}")
    async def get_allocation(alloc_id: str) -> Allocation:
        return jobs.allocation(alloc_id)
