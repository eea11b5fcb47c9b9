"""A node lost and back: the manager takes back the copies it still runs, correctly.

Pure manager logic: an in-process manager and a fake node (a WorkerClient whose answers
the test sets), driven through collection passes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cube.errors import Unavailable
from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import MachineStats, Node, NodeReport, NodeState, Resources
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskRequest
from cube.task.state import State

CAPACITY = Resources(cpu=4, memory=1024**3)


class FakeNode(WorkerClient):
    """One node: runs what it is sent, reports what the test says, can go silent."""

    def __init__(self) -> None:
        super().__init__()
        self.silent = False
        self.copies: dict[str, Task] = {}
        self.history: dict[str, list[TaskEvent]] = {}
        self.stops: list[str] = []
        self.release_stops = asyncio.Event()

    def _check(self) -> None:
        if self.silent:
            raise Unavailable("node n1 did not answer")

    async def stats(self, address: str) -> NodeReport:
        self._check()
        return NodeReport(name="n1", capacity=CAPACITY, allocated=Resources(), stats=MachineStats())

    async def tasks(self, address: str) -> list[Task]:
        self._check()
        return [copy.model_copy(deep=True) for copy in self.copies.values()]

    async def watch(self, address: str, *, since: str | None, wait: float) -> None:
        return None  # no blocking queries: collection lists the tasks

    async def run(self, address: str, request: TaskRequest) -> Task:
        self._check()
        copy = Task(id=request.id or "", spec=request.spec(), node="n1")
        self.copies[copy.id] = copy
        self.history[copy.id] = [copy.transition(State.SCHEDULED, "accepted")]
        return copy

    def start(self, task_id: str) -> None:
        copy = self.copies[task_id]
        self.history[task_id].append(copy.transition(State.RUNNING, "container abc started"))

    async def events(self, address: str, task_id: str) -> list[TaskEvent]:
        self._check()
        return list(self.history[task_id])

    async def stop(self, address: str, task_id: str, *, wait: float) -> Task:
        self.stops.append(task_id)
        await self.release_stops.wait()
        copy = self.copies[task_id]
        self.history[task_id].append(copy.transition(State.COMPLETED, "stopped by user"))
        return copy


async def collect(manager: Manager) -> None:
    """One collection pass, and its polls finished."""
    await manager.collect()
    await asyncio.gather(*(t for t in manager._background if t.get_name().startswith("poll ")))


async def lose(manager: Manager, node: FakeNode) -> None:
    node.silent = True
    record = manager.nodes["n1"]
    assert record.last_seen is not None
    record.last_seen -= timedelta(seconds=manager.pace.node_timeout + 1)
    await collect(manager)
    assert record.state is NodeState.DOWN


async def one_task_on(node: FakeNode) -> tuple[Manager, str]:
    """A manager whose one node is ``node``, and a task it placed there."""
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=CAPACITY))
    manager = Manager(store=store, scheduler=make_scheduler(), workers=node)
    task, _ = manager.submit(TaskRequest(name="web", image="busybox"))
    await manager.dispatch()
    return manager, task.id


async def test_a_returning_node_that_still_runs_a_task_gets_it_back_as_running() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    node.start(task_id)
    await collect(manager)
    assert manager.get(task_id).state is State.RUNNING  # every node event merged

    await lose(manager, node)
    assert manager.get(task_id).state is State.PENDING  # nowhere else to go

    node.silent = False
    await collect(manager)
    task = manager.get(task_id)
    assert (task.state, task.node) == (State.RUNNING, "n1")
    last = manager.events(task_id)[-1]
    assert (last.state, last.reason) == (State.RUNNING, "node n1 is back and still runs it")
    assert node.stops == []
    await manager.close()


async def test_a_copy_being_stopped_is_not_taken_back() -> None:
    node = FakeNode()
    manager, task_id = await one_task_on(node)
    await collect(manager)
    await lose(manager, node)

    # Back before its copy ran: the copy is stopped (the task is Pending, placed nowhere)...
    node.silent = False
    await collect(manager)
    assert node.stops == [task_id]
    # ...and running by the next pass, while the stop is still on its way: not taken back,
    # or the stop would end a task that should run.
    node.start(task_id)
    await collect(manager)
    assert manager.get(task_id).state is State.PENDING
    node.release_stops.set()
    await manager.close()
