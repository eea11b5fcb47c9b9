"""A node (worker machine) as the cluster sees it: capacity, what is allocated, what it measures.

These models are the wire format between a worker and the manager, and the input
of the scheduler. ``allocated`` is the sum of the *requested* resources of the
tasks placed on the node; ``stats`` is what the machine measured. The scheduler
decides fit from ``allocated`` (so two placements in the same second cannot both
take the last free gigabyte) and may use ``stats`` to rank.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from cube.task.model import utcnow


class NodeState(StrEnum):
    READY = "ready"  # heartbeating, accepts tasks
    DOWN = "down"  # missed its heartbeat deadline
    DRAINING = "draining"  # alive, but takes no new tasks and gives its tasks away


class Resources(BaseModel):
    """An amount of the three schedulable resources: CPU cores, memory and disk bytes."""

    cpu: float = 0.0
    memory: int = 0
    disk: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            cpu=self.cpu + other.cpu, memory=self.memory + other.memory, disk=self.disk + other.disk
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpu=self.cpu - other.cpu, memory=self.memory - other.memory, disk=self.disk - other.disk
        )

    def fits_in(self, other: Resources) -> bool:
        """True if every resource of ``self`` is at most that of ``other``."""
        eps = 1e-9  # CPU is a float: 0.1 * 3 must fit in 0.3
        return (
            self.cpu <= other.cpu + eps and self.memory <= other.memory and self.disk <= other.disk
        )


class MachineStats(BaseModel):
    """What a worker measured about its machine, sampled over a real interval."""

    cpu_percent: float = 0.0  # over the last sampling interval, 0-100 for the whole machine
    cpu_count: int = 1
    memory_total: int = 0
    memory_available: int = 0
    disk_total: int = 0
    disk_free: int = 0
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tasks_running: int = 0
    sampled_at: datetime = Field(default_factory=utcnow)


class Node(BaseModel):
    """A worker machine known to the cluster."""

    name: str
    address: str  # base URL of the worker's API, e.g. http://127.0.0.1:5556
    state: NodeState = NodeState.READY
    capacity: Resources = Field(default_factory=Resources)
    allocated: Resources = Field(default_factory=Resources)
    labels: dict[str, str] = Field(default_factory=dict)
    used_ports: set[int] = Field(default_factory=set)  # host ports taken by its tasks (tcp+udp)
    #: Host ports the worker found taken on its machine at its last report, by any process
    #: (its own containers included): Docker would refuse to publish them.
    ports_in_use: set[int] = Field(default_factory=set)
    stats: MachineStats | None = None
    tasks: int = 0
    allows: list[str] = Field(default_factory=list)  # privileges its operator allowed
    #: The token the node's API accepts. Kept in the store, never shown by the API.
    token: str | None = None
    #: SHA-256 of the node secret issued at its first join (see cube.manager.identity).
    #: Kept in the store, never shown by the API.
    secret_hash: str | None = None
    drain: bool = False  # set by an operator: take no new tasks, move the current ones away
    registered_at: datetime = Field(default_factory=utcnow)
    last_seen: datetime | None = None
    reason: str = ""

    @property
    def free(self) -> Resources:
        return self.capacity - self.allocated


#: The file in a worker's data dir that keeps its node secret (see cube.manager.identity).
NODE_SECRET_FILE = "node-secret"
