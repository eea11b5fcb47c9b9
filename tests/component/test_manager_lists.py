"""What the manager lists keeps up with every change, though it is cached.

Task lists (``GET /v1/tasks``) reuse each task's JSON until the task changes, and node
views (``GET /v1/nodes``, the scheduler's input) reuse each node's allocation until the
node or one of its tasks changes. An in-process manager (pure logic: its nodes are
fakes): every change must show in the next list.
"""

from __future__ import annotations

import json
from typing import Any

from cube.errors import NotFound
from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState, Resources
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task
from cube.task.spec import TaskRequest
from cube.task.state import State

GiB = 1024**3


def listed(manager: Manager, **filters: Any) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in json.loads(manager.tasks_json(**filters))}


async def test_a_list_shows_every_change_and_leaves_the_placement_out() -> None:
    manager = Manager(store=MemoryStore(), scheduler=make_scheduler())
    a, _ = await manager.submit(TaskRequest(name="a", image="busybox"))
    b, _ = await manager.submit(TaskRequest(name="b", image="busybox"))
    first = listed(manager)
    assert {t["state"] for t in first.values()} == {"pending"}
    assert first[a.id]["spec"]["name"] == "a"

    await manager.dispatch()  # no node: each task gets a placement and a reason why not
    assert manager.get(a.id).placement is not None
    second = listed(manager)
    assert "placement" not in second[a.id]
    assert second[a.id]["reason"] == manager.get(a.id).reason != first[a.id]["reason"]

    await manager.stop(a.id)
    third = listed(manager)
    assert (third[a.id]["state"], third[a.id]["desired"]) == ("completed", "stop")
    assert third[b.id] == second[b.id]  # unchanged: the same bytes as before
    assert listed(manager, state=State.PENDING).keys() == {b.id}  # a list of one
    assert listed(manager, state=State.RUNNING) == {}  # and of none


async def test_the_cached_bytes_are_the_tasks_own_json() -> None:
    manager = Manager(store=MemoryStore(), scheduler=make_scheduler())
    task, _ = await manager.submit(TaskRequest(name="a", image="busybox", command=["sleep", "1"]))
    manager.tasks_json()  # fills the cache
    want = json.loads(manager.get(task.id).model_dump_json(exclude={"placement"}))
    assert json.loads(manager.tasks_json()) == [want]


class NodeThatNeverHeardOfIt(WorkerClient):
    """Accepts every task sent, and answers a stop with 404 (pure logic: no HTTP)."""

    async def run(self, address: str, request: TaskRequest) -> Task:
        return Task(id=request.id or "", spec=request.spec())

    async def stop(
        self, address: str, task_id: str, *, wait: float, reason: str | None = None
    ) -> Task:
        raise NotFound(f"task {task_id} not found")


async def test_node_views_follow_placements_stops_and_drains() -> None:
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=Resources(cpu=4, memory=GiB)))
    manager = Manager(store=store, scheduler=make_scheduler(), workers=NodeThatNeverHeardOfIt())
    assert manager.get_node("n1").allocated.cpu == 0

    task, _ = await manager.submit(TaskRequest(name="a", image="busybox", resources={"cpu": 1.5}))
    await manager.dispatch()
    assert manager.get(task.id).node == "n1"
    assert manager.get_node("n1").allocated.cpu == 1.5
    assert manager.list_nodes()[0].tasks == 1

    await manager.stop(task.id)  # completed: its resources are free again
    assert manager.get_node("n1").allocated.cpu == 0
    assert manager.list_nodes()[0].tasks == 0

    await manager.drain("n1")
    assert manager.get_node("n1").state is NodeState.DRAINING
    await manager.undrain("n1")
    assert manager.list_nodes()[0].state is NodeState.READY
