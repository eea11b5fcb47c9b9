"""A task as Cube tracks it: the user's spec plus everything that happened to it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from cube.task.spec import AllocRef, Protocol, TaskSpec
from cube.task.state import TERMINAL, State, check_transition


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_task_id() -> str:
    return uuid.uuid4().hex


#: How many characters of an ID the tables show (like docker's 12).
SHORT_ID = 12
#: The reason a stop is recorded with when its caller gives none.
STOPPED_BY_USER = "stopped by user"


def short_task_id(task_id: str) -> str:
    """A task ID as tables show it: its first 12 characters, like ``docker``.

    The tasks of a job's allocation are ``<alloc id>-<task name>``, and the first 12
    characters of ``api`` and ``proxy`` in one allocation are the same: they keep what
    follows the first dash (``1a2b3c4d5e6f-api``), a form :func:`abbreviates` reads back.
    """
    head, dash, tail = task_id.partition("-")
    return head[:SHORT_ID] + dash + tail if dash else task_id[:SHORT_ID]


def abbreviates(ref: str, task_id: str) -> bool:
    """Whether ``ref`` is a prefix of ``task_id`` or of its form ``<prefix>-<rest>``."""
    if task_id.startswith(ref):
        return True
    head, dash, tail = ref.partition("-")
    id_head, id_dash, id_tail = task_id.partition("-")
    return bool(dash and id_dash and head and tail == id_tail and id_head.startswith(head))


class DesiredState(StrEnum):
    """What the user wants: the task running, or stopped. Reconcilers chase this."""

    RUN = "run"
    STOP = "stop"


class Health(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class PublishedPort(BaseModel):
    """A container port and where the node actually published it."""

    container: int
    host: int
    protocol: Protocol = Protocol.TCP
    #: The one node address it is published on; "" for every address (0.0.0.0 and ::).
    host_ip: str = ""


class TaskEvent(BaseModel):
    """One entry in a task's history: a state change, or a note (pull progress, health)."""

    time: datetime = Field(default_factory=utcnow)
    previous: State | None = None
    state: State
    reason: str = ""
    exit_code: int | None = None
    node: str | None = None


class Task(BaseModel):
    """The record every component keeps about a task.

    Only :meth:`transition` changes ``state``; it checks the transition table and
    returns the event to append to the task's history.
    """

    id: str = Field(default_factory=new_task_id)
    spec: TaskSpec
    #: The job allocation this task is part of; None for a task run on its own.
    alloc: AllocRef | None = None
    state: State = State.PENDING
    desired: DesiredState = DesiredState.RUN
    #: Why the task is to stop (``desired: stop``): the reason its end is recorded with
    #: ("stopped by user", "web was scaled to 2", ...). Empty while it is to run.
    desired_reason: str = ""
    node: str | None = None
    container_id: str | None = None
    ports: list[PublishedPort] = Field(default_factory=list)
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    health: Health = Health.UNKNOWN
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: The scheduler's explanation of the last placement (a cube.scheduler Decision as JSON).
    placement: dict[str, Any] | None = None
    #: How many of the node's events the manager has merged into this record (manager only).
    node_events: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    def transition(
        self,
        target: State,
        reason: str,
        *,
        exit_code: int | None = None,
        now: datetime | None = None,
    ) -> TaskEvent:
        """Move to ``target`` if the table allows it; raise IllegalTransition otherwise."""
        check_transition(self.state, target)
        now = now or utcnow()
        event = TaskEvent(
            time=now,
            previous=self.state,
            state=target,
            reason=reason,
            exit_code=exit_code,
            node=self.node,
        )
        self.state = target
        self.reason = reason
        self.updated_at = now
        if target is State.RUNNING:
            self.started_at = now
            self.exit_code = None
            self.finished_at = None
        elif target in TERMINAL:
            self.exit_code = exit_code
            self.finished_at = now
        return event
