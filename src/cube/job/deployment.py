"""A deployment: one job version rolled out over the allocations of the previous ones.

Every version of a service or system job gets one (Nomad's deployment): it records where
the rollout is (per group: allocations wanted, placed, healthy, unhealthy, canaries), its
status with a reason a person can read, and when it last made progress. Its statuses::

    Running ──► Successful
       │  ▲
       ▼  │ promote
    Waiting for promotion          (canaries healthy; `cube job promote` / `cube job fail`)

    Running ◄──► Paused              (`cube job pause` / `cube job resume`: nothing more is
                                      replaced meanwhile, and no deadline runs)
       │
       ▼
    Failed ──► Rolled back          (auto_revert or `cube job fail`: the job went back)

    Running / Waiting / Paused ──► Cancelled  (a newer version was submitted, or the job stopped)

Successful, Failed, Rolled back and Cancelled are terminal. The decisions that move a
deployment are pure (:mod:`cube.job.deploy`); the manager saves what they say.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from cube.task.model import utcnow


class DeploymentStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    WAITING = "waiting-for-promotion"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    CANCELLED = "cancelled"

    @property
    def title(self) -> str:  # type: ignore[override]
        return self.value.replace("-", " ").capitalize()

    @property
    def active(self) -> bool:
        return self in (DeploymentStatus.RUNNING, DeploymentStatus.PAUSED, DeploymentStatus.WAITING)


class GroupDeployment(BaseModel):
    """One group's part of a deployment, as counted at the last pass."""

    desired: int = 0  # allocations the version wants (system: the eligible nodes)
    placed: int = 0  # allocations of the version placed so far
    healthy: int = 0
    unhealthy: int = 0
    desired_canaries: int = 0
    canaries: list[str] = Field(default_factory=list)  # their IDs
    promoted: bool = False


class Deployment(BaseModel):
    """The rollout of job version ``version`` (from ``from_version``)."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    job: str
    version: int = Field(ge=1)
    from_version: int | None = None
    #: This deployment goes back to an earlier spec: it never runs a canary phase.
    revert: bool = False
    status: DeploymentStatus = DeploymentStatus.RUNNING
    status_reason: str = "rolling out"
    groups: dict[str, GroupDeployment] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    #: When an allocation last became healthy (or the deployment began): progress_deadline
    #: counts from here.
    progress_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def waiting_canaries(self) -> bool:
        """Whether some group still has canaries to promote."""
        return any(g.desired_canaries and not g.promoted for g in self.groups.values())
