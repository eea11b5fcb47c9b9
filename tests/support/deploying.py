"""A job rolled out in an in-process manager on three fake nodes, each pass at a clock the
test chooses: the cluster the deployment tests drive, and any test of a rollout's writes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cube.job.deployment import DeploymentStatus
from cube.job.model import Allocation, AllocDesired
from cube.job.spec import JobSpec
from cube.manager.core import Manager
from cube.store.memory import MemoryStore
from cube.task.model import DesiredState
from cube.task.state import State
from tests.support.fake_nodes import NOW, FakeWorkers, make_manager, node, run_all, settle
from tests.support.rollouts import job_spec

UPDATE = {"min_healthy_time": "1s", "healthy_deadline": "5s", "progress_deadline": "20s"}


def spec(image: str = "busybox:1", count: int = 3, **update: Any) -> JobSpec:
    return job_spec(image, count, **{**UPDATE, **update})


def at(seconds: float) -> Any:
    return NOW + timedelta(seconds=seconds)


class Cluster:
    """A manager with three nodes, and the passes a test drives at its own clock."""

    def __init__(self, store: MemoryStore | None = None, workers: FakeWorkers | None = None):
        self.store = store or MemoryStore()
        self.workers = workers or FakeWorkers()
        for name in ("n1", "n2", "n3"):
            self.store.save_node(node(name))
        self.manager: Manager = make_manager(self.store, self.workers)
        #: Every allocation ID ever stopped while it was healthy, with its version.
        self.healthy_stopped: set[tuple[str, int]] = set()

    async def passes(self, *seconds: float, run: bool = True) -> None:
        """A pass at each time; before each, the nodes report every task Running."""
        for s in seconds:
            if run:
                run_all(self.manager)
            before = {a.id: a.model_copy() for a in self.allocs()}
            await self.manager.jobs.reconcile_all(at(s))
            await settle(self.manager)
            for a in self.allocs():
                was = before.get(a.id)
                if (
                    was is not None
                    and was.desired is AllocDesired.RUN
                    and was.healthy
                    and a.desired is AllocDesired.STOP
                ):
                    self.healthy_stopped.add((a.id, a.version))

    def allocs(self) -> list[Allocation]:
        return self.manager.jobs.allocations(job="shop")

    def live(self, version: int | None = None) -> list[Allocation]:
        return [
            a
            for a in self.allocs()
            if a.desired is AllocDesired.RUN
            and not a.is_terminal
            and (version is None or a.version == version)
        ]

    def deployment(self) -> Any:
        return self.manager.jobs.deployments.current(self.manager.jobs.job("shop"))

    def stop_reported(self) -> None:
        """The nodes report every task the manager stopped as ended."""
        for t in self.manager.tasks.values():
            if t.desired is DesiredState.STOP and not t.is_terminal:
                self.manager._save(t, t.transition(State.COMPLETED, "stopped", exit_code=0))


async def deployed(**update: Any) -> Cluster:
    """Version 1 of shop, running and healthy: its deployment succeeded."""
    c = Cluster()
    await c.manager.jobs.submit(spec(**update))
    await c.passes(0, 0.5, 1.5)
    assert c.deployment().status is DeploymentStatus.SUCCESSFUL
    return c
