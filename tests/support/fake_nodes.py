"""A manager in process whose nodes are fakes that accept everything: the job applier's,
deployments', passes' and takeover tests drive it through collection passes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from cube.errors import NotFound
from cube.job.parse import parse_job
from cube.job.spec import JobSpec
from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import Node, Resources
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import DesiredState, Task
from cube.task.spec import TaskRequest
from cube.task.state import State

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


CAPACITY = Resources(cpu=4, memory=1024**3, disk=10 * 1024**3)


class FakeWorkers(WorkerClient):
    """Every node accepts what it is sent; the test reads the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, TaskRequest]] = []
        self.stopped: list[str] = []
        self.stop_reasons: dict[str, str | None] = {}

    async def run(self, address: str, request: TaskRequest) -> Task:
        self.sent.append((address, request))
        return Task(id=request.id or "", spec=request.spec())

    async def stop(
        self, address: str, task_id: str, *, wait: float, reason: str | None = None
    ) -> Task:
        self.stopped.append(task_id)
        self.stop_reasons[task_id] = reason
        raise NotFound(f"task {task_id} not found")


def node(name: str, *, dc: str = "dc1") -> Node:
    return Node(name=name, address=f"http://{name}", capacity=CAPACITY, labels={"datacenter": dc})


def make_manager(store: MemoryStore, workers: FakeWorkers) -> Manager:
    return Manager(store=store, scheduler=make_scheduler("round-robin"), workers=workers)


async def settle(manager: Manager) -> None:
    """Let the sends and stops the pass started finish."""
    for _ in range(3):
        await asyncio.gather(*manager._background, *manager.jobs.background, return_exceptions=True)
        await manager.registry.settled()


def job_spec(count: int = 3, **group: Any) -> JobSpec:
    tasks = [
        {"name": "api", "image": "busybox", "resources": {"cpu": 0.5, "memory": "64MiB"}},
        {"name": "proxy", "image": "busybox", "ports": ["8080"]},
    ]
    return parse_job(
        {"job": "shop", "groups": [{"name": "web", "count": count, "tasks": tasks, **group}]}
    )


async def submitted(spec: JobSpec, *nodes: str) -> tuple[MemoryStore, FakeWorkers, Manager]:
    """A manager with ``nodes`` that took ``spec`` and sent what its first pass placed."""
    store, workers = MemoryStore(), FakeWorkers()
    for name in nodes:
        store.save_node(node(name))
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec)
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    return store, workers, manager


def run_all(manager: Manager) -> None:
    """Mark every task of every allocation Running, as the nodes would report."""
    for t in manager.tasks.values():
        if t.state is State.SCHEDULED and t.desired is DesiredState.RUN:
            manager._save(t, t.transition(State.RUNNING, "started"))
