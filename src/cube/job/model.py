"""Jobs, their versions and their allocations, as Cube tracks them.

* A :class:`Job` is the user's intent under one name: which version is current,
  whether it was stopped, and the status the reconciler last derived (pending,
  running, complete, failed, dead).
* A :class:`JobVersion` is one submitted spec. Submitting the same spec again makes
  no new version (:func:`next_version` compares :func:`spec_hash`); a changed spec
  makes version ``n + 1``, and older ones stay as history.
* An :class:`Allocation` is one copy of one group on one node (Nomad's word): its
  tasks run together there. It records the version it runs, what the manager wants
  (``desired``: run or stop) and what the node reports (``status``), and the chain of
  replacements (``replaces`` / ``replaced_by``) with the reschedule attempts so far.

Allocation statuses move through one table, like a task's (:mod:`cube.task.state`)::

    Pending ──► Running ──► Complete | Failed
       │           │
       └─────┬─────┘
             ▼
           Lost ──► Complete | Failed      (its node came back and stopped it)

    (Pending may also end Complete or Failed at once: a quick batch run, a failed start.)

* Pending: created; not placed yet, or its tasks not all started.
* Running: every task of it runs on its node.
* Complete: every task exited 0 (batch), or it was stopped.
* Failed: a task failed and its restart policy, on the node, gave up.
* Lost: its node went down or away. The node may still run it, unseen; if the node
  comes back, it stops the allocation, which ends Complete (or Failed).

Complete, Failed and Lost are terminal: a terminal allocation never runs again; the
reconciler *replaces* it with a new one that says which one it replaces.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from cube.errors import IllegalTransition
from cube.job.spec import GroupSpec, JobSpec
from cube.task.model import utcnow
from cube.task.spec import KEEP_SECRETS, alloc_name
from cube.task.state import State


def new_alloc_id() -> str:
    return uuid.uuid4().hex


def _digest(value: Any) -> str:
    """A stable hash of JSON-able data: keys sorted, no whitespace, so equal data hash equal."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def spec_hash(spec: JobSpec) -> str:
    """The identity of a submitted spec: the same file again hashes the same.

    Hashed after parsing, so ``memory: 64MiB`` and ``memory: 67108864`` are the same spec.
    """
    return _digest(spec.model_dump(mode="json", context=KEEP_SECRETS))


def group_hash(spec: JobSpec, group: GroupSpec) -> str:
    """What an allocation's containers depend on; a change needs new containers.

    The tasks, the constraints and the datacenters: a change to any of them is a
    *destructive* update (stop the allocation, start a new one). ``count``,
    ``reschedule`` and ``parallelism`` are left out: changing them touches no running
    container, so allocations move to the new version in place (Nomad's in-place update).
    """
    return _digest(
        {
            "tasks": [task.model_dump(mode="json", context=KEEP_SECRETS) for task in group.tasks],
            "constraints": [spec.constraints, group.constraints],
            "datacenters": sorted(spec.datacenters),
        }
    )


# --- jobs ----------------------------------------------------------------------------------


class JobStatus(StrEnum):
    PENDING = "pending"  # no allocation has run yet
    RUNNING = "running"  # at least one allocation runs (or a service is at count 0)
    COMPLETE = "complete"  # batch: every allocation succeeded
    FAILED = "failed"  # batch: an allocation failed for good, and nothing runs any more
    DEAD = "dead"  # stopped by a user

    @property
    def title(self) -> str:  # type: ignore[override]
        return self.value.capitalize()


class Job(BaseModel):
    """A job as the manager keeps it; its spec lives in its versions."""

    id: str  # the job's name: ``job:`` in the file
    version: int = 1  # the current version's number
    status: JobStatus = JobStatus.PENDING
    status_reason: str = ""
    #: Set by ``cube job stop``: every allocation stops, none is placed; a new submit clears it.
    stopped: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class JobVersion(BaseModel):
    """One submitted spec of a job, numbered from 1."""

    job: str
    number: int = Field(ge=1)
    spec: JobSpec
    spec_hash: str
    submitted_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def of(cls, spec: JobSpec, number: int, *, now: datetime) -> JobVersion:
        return cls(
            job=spec.job, number=number, spec=spec, spec_hash=spec_hash(spec), submitted_at=now
        )


def next_version(current: JobVersion | None, spec: JobSpec, *, now: datetime) -> JobVersion | None:
    """The version a submit of ``spec`` creates, or None when it is the current spec again.

    This is what makes submitting idempotent: the same file twice is one version.
    """
    if current is None:
        return JobVersion.of(spec, 1, now=now)
    if current.spec_hash == spec_hash(spec):
        return None
    return JobVersion.of(spec, current.number + 1, now=now)


# --- allocations ---------------------------------------------------------------------------


class AllocDesired(StrEnum):
    """What the manager wants of the allocation."""

    RUN = "run"
    STOP = "stop"


class AllocStatus(StrEnum):
    """What the node says of the allocation (or the manager, when the node is gone)."""

    PENDING = "pending"  # not placed yet, or its tasks not all started
    RUNNING = "running"  # every task runs
    COMPLETE = "complete"  # every task exited 0, or it was stopped
    FAILED = "failed"  # a task failed and its restart policy gave up
    LOST = "lost"  # its node went down or away; the node may still run it

    @property
    def title(self) -> str:  # type: ignore[override]
        return self.value.capitalize()


_P, _R, _C, _F, _L = (
    AllocStatus.PENDING,
    AllocStatus.RUNNING,
    AllocStatus.COMPLETE,
    AllocStatus.FAILED,
    AllocStatus.LOST,
)

#: Every legal status change. Anything not listed raises IllegalTransition.
ALLOC_TRANSITIONS: dict[AllocStatus, frozenset[AllocStatus]] = {
    _P: frozenset({_R, _C, _F, _L}),  # started; stopped or (batch) done quickly; failed; node lost
    _R: frozenset({_C, _F, _L}),  # done or stopped; failed for good; node lost
    _C: frozenset(),
    _F: frozenset(),
    _L: frozenset({_C, _F}),  # its node came back and stopped it (or saw it fail)
}

#: Statuses in which none of the allocation's containers runs (or should, for Lost).
ALLOC_TERMINAL: frozenset[AllocStatus] = frozenset({_C, _F, _L})


class IllegalAllocTransition(IllegalTransition):
    """An allocation status change the table does not allow.

    A kind of :class:`~cube.errors.IllegalTransition`, so it maps to the same HTTP status
    and exit code; only the message names allocations instead of tasks.
    """

    def __init__(self, current: str, target: str) -> None:
        super().__init__(current, target)
        self.message = f"illegal allocation transition {current} -> {target}"
        self.args = (self.message,)


def can_alloc_transition(current: AllocStatus, target: AllocStatus) -> bool:
    return target in ALLOC_TRANSITIONS[current]


def check_alloc_transition(current: AllocStatus, target: AllocStatus) -> None:
    """Raise :class:`IllegalAllocTransition` naming both statuses unless the table allows it."""
    if not can_alloc_transition(current, target):
        raise IllegalAllocTransition(current.title, target.title)


class AllocEvent(BaseModel):
    """One entry of an allocation's history: a status change, or a note (desired stop)."""

    time: datetime = Field(default_factory=utcnow)
    previous: AllocStatus | None = None
    status: AllocStatus
    reason: str = ""


class AllocTask(BaseModel):
    """One task of an allocation, as the node last reported it."""

    id: str  # the task's ID (a cube.task.model.Task on the node)
    state: State = State.PENDING
    exit_code: int | None = None
    restarts: int = 0


class RescheduleEvent(BaseModel):
    """One replacement of a failed allocation: when, of which one, after how long a wait."""

    time: datetime
    prev_alloc: str
    prev_node: str | None = None
    delay: float = 0.0


class Allocation(BaseModel):
    """One copy (``index``) of one group of one job, on one node.

    Only :meth:`transition` changes ``status``. ``reschedule_events`` travel along the
    chain of replacements: a replacement carries its predecessor's events plus one,
    so their number is the attempts used so far (Nomad's RescheduleTracker).
    """

    id: str = Field(default_factory=new_alloc_id)
    job: str
    group: str
    index: int = Field(ge=0)
    version: int = Field(ge=1)
    #: :func:`group_hash` of the group at ``version``: equal hashes mean equal containers.
    group_hash: str
    #: Set when it is made (placed); None only in tests and in an older Cube's store,
    #: whose allocations without a node are ignored on load (cube.manager.job_records).
    node: str | None = None
    desired: AllocDesired = AllocDesired.RUN
    desired_reason: str = ""
    status: AllocStatus = AllocStatus.PENDING
    status_reason: str = ""
    tasks: dict[str, AllocTask] = Field(default_factory=dict)
    reschedule_events: list[RescheduleEvent] = Field(default_factory=list)
    replaces: str | None = None
    replaced_by: str | None = None
    events: list[AllocEvent] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    #: The scheduler's explanation of where the allocation went (a cube.scheduler
    #: Decision as JSON), kept per allocation as Nomad keeps its metrics. A placement that
    #: found no node makes no allocation (cube.job.blocked).
    placement: dict[str, Any] | None = None
    #: The deployment that placed it (None: placed before deployments, or by a batch job).
    deployment: str | None = None
    #: A canary: started beside the old allocations, holding no slot until promoted.
    canary: bool = False
    #: Since when every task runs and passes its health check (None: not now).
    ready_since: datetime | None = None
    #: The deployment's verdict (cube.job.deploy.judge_health): True once ready for
    #: min_healthy_time, False once it failed or missed healthy_deadline; then it stays.
    healthy: bool | None = None

    @property
    def name(self) -> str:
        """``shop.web[2]``: how people (and Nomad) name an allocation."""
        return alloc_name(self.job, self.group, self.index)

    @property
    def is_terminal(self) -> bool:
        return self.status in ALLOC_TERMINAL

    @property
    def reschedule_attempts(self) -> int:
        return len(self.reschedule_events)

    def transition(self, target: AllocStatus, reason: str, *, now: datetime) -> AllocEvent:
        """Move to ``target`` if the table allows it, record and return the event."""
        check_alloc_transition(self.status, target)
        event = AllocEvent(time=now, previous=self.status, status=target, reason=reason)
        self.status = target
        self.status_reason = reason
        self.updated_at = now
        if target in ALLOC_TERMINAL and self.finished_at is None:
            self.finished_at = now
        self.events.append(event)
        return event
