"""The messages the manager and its workers exchange.

They belong to neither agent: the manager sends and reads them through
:mod:`cube.manager.workers` and answers a join in :mod:`cube.manager.api`; a worker
answers them in :mod:`cube.worker.api` and joins in :mod:`cube.worker.join`; both
import them from here (as Nomad's agents share ``structs``). A node's record
(:class:`cube.node.Node`) and a task's (:class:`cube.task.model.Task`) are domain types
that these messages carry.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from pydantic import BaseModel, Field, StringConstraints, field_validator

from cube.node import MachineStats, Node, Resources
from cube.task.model import Task, TaskEvent
from cube.task.spec import NAME_PATTERN

#: The longest a blocking query may wait (the manager's waits stay under it). A stopping
#: worker answers its queries at once (ChangeFeed.close), so a long wait does not hold
#: its shutdown up.
MAX_WAIT = 60.0


class TaskChanges(BaseModel):
    """A worker's answer to a blocking query (``GET /v1/changes``)."""

    #: Where the next query starts (``?since=``).
    index: str
    #: Whether ``tasks`` is every task of the node, or only those changed since the query's.
    complete: bool
    tasks: list[Task]
    #: Each listed task's history, as ``GET /v1/tasks/{id}/events`` would give it: read with
    #: the task, so the two agree, and no call per task to ask for it.
    events: dict[str, list[TaskEvent]]


class NodeReport(BaseModel):
    """What a worker says about itself in ``GET /v1/stats`` (and when it registers)."""

    name: str
    capacity: Resources
    allocated: Resources
    labels: dict[str, str] = Field(default_factory=dict)
    used_ports: list[int] = Field(default_factory=list)
    ports_in_use: list[int] = Field(default_factory=list)
    tasks: int = 0
    allows: list[str] = Field(default_factory=list)
    stats: MachineStats


#: The header of the manager's calls to a worker that carries the node timeout in force
#: (seconds): it grows with the fleet, and a worker's disconnect window follows it.
NODE_TIMEOUT_HEADER = "Cube-Node-Timeout"


class JoinAnswer(BaseModel):
    """The manager's answer to a worker's join (``POST /v1/nodes``)."""

    node: Node
    #: Issued at the node's first join, and only then: the worker keeps it and presents
    #: it at every later join, to prove it is this node.
    secret: str | None = None
    #: The IDs of the tasks the manager places on this node. A returning worker starts,
    #: restarts or keeps only these, and stops the others (moved while it was away).
    tasks: list[str] = Field(default_factory=list)
    #: Seconds of silence after which the manager calls a node Down (the pace in force):
    #: a worker's default for ``--stop-after-disconnect``.
    node_timeout: float


#: A token or node secret, as a worker presents it.
Credential = Annotated[
    str, StringConstraints(min_length=16, max_length=256, pattern=r"^[A-Za-z0-9_.~+/=-]+$")
]


class NodeRegistration(BaseModel):
    """What a worker says when it joins: its name and where its API answers."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    address: str = Field(
        min_length=1, max_length=255, pattern=r"^https?://[^\s/]+(:\d+)?(/[A-Za-z0-9._/-]*)?$"
    )
    token: Credential | None = Field(
        default=None,
        description="the token the worker's API accepts; the manager calls it with this",
    )
    secret: Credential | None = Field(
        default=None,
        description="the node secret issued at this node's first join (proves it is that node)",
    )
    running: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list,
        max_length=100_000,
        description="IDs of the tasks whose containers the worker found running when it started",
    )

    @field_validator("address")
    @classmethod
    def _usable(cls, value: str) -> str:
        """The manager's HTTP client must take it: no control character, no host IDNA
        refuses, no port past 65535 (else a registration would end in a 500)."""
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a usable URL: {exc}") from None
        if not url.host:
            raise ValueError("not a usable URL: no host")
        if url.port is not None and not 0 < url.port <= 65535:
            raise ValueError(f"not a usable URL: port {url.port} is out of range")
        return value
