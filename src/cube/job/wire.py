"""The answers of the manager's job API that the CLI reads too: one definition for both."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from cube.job.blocked import PlacementFailure
from cube.job.deployment import Deployment
from cube.job.model import Allocation, Job
from cube.job.spec import MAX_COUNT, JobSpec
from cube.scheduler.decision import Decision


class JobDetail(BaseModel):
    """A job with its current version's spec and its allocations."""

    job: Job
    spec: JobSpec
    allocations: list[Allocation]
    #: The current version's deployment (None: a batch job, or not made yet).
    deployment: Deployment | None = None
    #: Group -> its placements that found no node in the last pass, and why (Nomad's
    #: placement failures): none of them has an allocation.
    placement_failures: dict[str, PlacementFailure] = {}


class ScaleRequest(BaseModel):
    model_config = {"extra": "forbid"}

    group: str = Field(min_length=1, max_length=63)
    count: int = Field(ge=0, le=MAX_COUNT)


class PlanEntry(BaseModel):
    """One line of a plan: what would happen to which allocation or slot, and why."""

    action: str  # place, stop, update, inplace, keep, wait
    reason: str
    group: str | None = None
    index: int | None = None
    alloc: str | None = None
    #: For placements: the node the scheduler would choose (None: none fits).
    node: str | None = None
    placement: Decision | None = None


class JobPlan(BaseModel):
    """The answer of ``POST /v1/jobs/plan``."""

    job: str
    version: int
    status: str
    status_reason: str
    entries: list[PlanEntry]
    #: Placements that would find no node (each entry's reason says why).
    unplaceable: int
    #: Group -> its placements that would find no node, and why (as a job's, JobDetail).
    placement_failures: dict[str, PlacementFailure] = {}


class RevertRequest(BaseModel):
    """``POST /v1/jobs/{id}/revert``: a version to go back to, or none for the last good one."""

    model_config = {"extra": "forbid"}

    version: int | None = Field(default=None, ge=1, le=2**31)


class HistoryEntry(BaseModel):
    """One version of a job, what changed since the one before, and how its deployment went."""

    version: int
    submitted_at: datetime
    spec_hash: str
    #: Each group's count (None: a system group, one per eligible node).
    groups: dict[str, int | None]
    changes: list[str]
    deployment: str | None = None  # its status (the last deployment of the version)
    deployment_reason: str | None = None
