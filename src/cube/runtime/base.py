"""The container runtime seam: what a worker needs from a container engine.

:class:`ContainerRuntime` is implemented by :class:`~cube.runtime.docker.DockerRuntime`
(the real Docker Engine API) and by :class:`~cube.runtime.fake.FakeRuntime` (in
memory, for pure-logic tests and simulations of many nodes).

Every container Cube creates carries the labels below, so that it can always be
found again, adopted after a worker restart, or cleaned up.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cube.runtime.exec import ExecSession
from cube.task.model import PublishedPort
from cube.task.spec import AllocRef, Mount, PortMapping

LABEL_MANAGED_BY = "cube.managed-by"
MANAGED_BY = "cube"
LABEL_TASK_ID = "cube.task-id"
LABEL_TASK_NAME = "cube.task-name"
LABEL_WORKER = "cube.worker"
#: The task's spec as JSON, so a container describes itself even if a store is lost.
LABEL_SPEC = "cube.spec"
#: The job allocation a container (or an allocation's network) belongs to, if any: with
#: these a container describes its allocation too, and a network can be found by it.
LABEL_ALLOC_ID = "cube.alloc-id"
LABEL_JOB = "cube.job"
LABEL_GROUP = "cube.group"
LABEL_ALLOC_INDEX = "cube.alloc-index"
LABEL_ALLOC_SIZE = "cube.alloc-size"

ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class ContainerConfig:
    """Everything needed to create one container for one task attempt."""

    name: str
    image: str
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[PortMapping] = field(default_factory=list)
    cpu: float = 0.1  # cores
    memory: int = 64 * 1024**2  # bytes
    privileged: bool = False
    network: str = "bridge"
    #: Names other containers on ``network`` reach this one by (a user-defined network only:
    #: Docker's default bridge has no DNS). An allocation's tasks find each other this way.
    aliases: list[str] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)


@dataclass(frozen=True)
class ContainerSummary:
    """A row of a container listing: cheap to get for every container at once."""

    id: str
    name: str
    labels: Mapping[str, str]
    running: bool


@dataclass(frozen=True)
class ContainerInfo:
    """The full state of one container, as inspected."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str]
    status: str  # created, running, exited, dead, ...
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    error: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ports: list[PublishedPort] = field(default_factory=list)
    cpu: float = 0.0  # limit in cores, 0 = none
    memory: int = 0  # limit in bytes, 0 = none
    ip: str = ""  # address on the engine's network, where health checks reach it


@dataclass(frozen=True)
class NetworkSummary:
    """A network the engine has, as listed."""

    id: str
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class ContainerStats:
    cpu_percent: float  # of one core: 150.0 = one and a half cores busy
    memory_usage: int
    memory_limit: int


class ContainerRuntime(Protocol):
    async def ping(self) -> None:
        """Raise :class:`cube.errors.RuntimeUnavailable` unless the engine answers a new
        caller: a stopping engine that still serves the calls under way does not."""

    async def ensure_image(
        self, image: str, *, on_progress: ProgressCallback | None = None
    ) -> None:
        """Pull ``image`` unless the engine has it; ContainerError with the engine's message
        if that fails. The slow, safely cancellable part of starting a container."""

    async def run(
        self, config: ContainerConfig, *, on_progress: ProgressCallback | None = None
    ) -> ContainerInfo:
        """Pull the image if it is missing, create and start the container.

        Raises :class:`cube.errors.ContainerError` with the engine's message when any
        step fails (:class:`cube.errors.NotFound` when the image or the container vanished
        between two steps); a container created before the failure is removed again.
        """

    async def stop(self, container_id: str, *, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. No-op if not running or gone."""

    async def remove(self, container_id: str) -> None:
        """Remove the container (killing it if needed). No-op if it is already gone."""

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """The container's state, or None if it does not exist."""

    async def list(self, labels: Mapping[str, str]) -> list[ContainerSummary]:
        """Every container (running or not) carrying all of ``labels``."""

    def exits(self, labels: Mapping[str, str]) -> AsyncIterator[str]:
        """IDs of containers carrying ``labels`` as they exit, for as long as the engine answers.

        Ends (or raises RuntimeUnavailable) when the connection to the engine breaks;
        callers reconnect and reconcile.
        """

    def logs(
        self,
        container_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        since: float | None = None,
    ) -> AsyncIterator[bytes]:
        """The container's stdout and stderr, interleaved, as they were written; with
        ``since`` (Unix time), only what was written from then on."""

    async def stats(self, container_id: str) -> ContainerStats:
        """One sample of the container's CPU and memory use."""

    async def exec(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> ExecSession:
        """Start ``command`` in the running container, its streams attached (stdin only
        with ``stdin``; one TTY for all of them with ``tty``). NotFound without the
        container, Conflict when it does not run."""

    async def ensure_network(self, name: str, *, labels: Mapping[str, str]) -> str:
        """Create a private bridge network called ``name`` unless it exists; its ID.

        Idempotent and safe to race: two callers get the same network. Containers on it
        reach each other by name and alias through the engine's DNS.
        """

    async def remove_network(self, name: str) -> None:
        """Remove the network. No-op if it is gone; ContainerError while containers use it."""

    async def networks(self, labels: Mapping[str, str]) -> builtins.list[NetworkSummary]:
        """Every network carrying all of ``labels``."""

    async def close(self) -> None:
        """Release connections."""


def task_labels(*, task_id: str, task_name: str, worker: str, spec_json: str) -> dict[str, str]:
    """The labels every task container carries."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TASK_ID: task_id,
        LABEL_TASK_NAME: task_name,
        LABEL_WORKER: worker,
        LABEL_SPEC: spec_json,
    }


def alloc_labels(alloc: AllocRef) -> dict[str, str]:
    """The labels every container of an allocation carries (its network, all but the index)."""
    return {
        LABEL_ALLOC_ID: alloc.id,
        LABEL_JOB: alloc.job,
        LABEL_GROUP: alloc.group,
        LABEL_ALLOC_INDEX: str(alloc.index),
        **({LABEL_ALLOC_SIZE: str(alloc.size)} if alloc.size is not None else {}),
    }


def alloc_from_labels(labels: Mapping[str, str]) -> AllocRef | None:
    """The allocation :func:`alloc_labels` describe; None without (or with unreadable) ones."""
    if LABEL_ALLOC_ID not in labels:
        return None
    try:
        return AllocRef(
            id=labels[LABEL_ALLOC_ID],
            job=labels.get(LABEL_JOB, ""),
            group=labels.get(LABEL_GROUP, ""),
            index=int(labels.get(LABEL_ALLOC_INDEX, "")),
            size=int(labels[LABEL_ALLOC_SIZE]) if LABEL_ALLOC_SIZE in labels else None,
        )
    except ValueError:  # pydantic's ValidationError is one
        return None


def worker_selector(worker: str) -> dict[str, str]:
    """Labels that select every container of one worker."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_WORKER: worker}
