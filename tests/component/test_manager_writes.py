"""The manager's own changes of tasks and nodes: saved off the loop, then shown.

In-process (tests/support/fake_nodes.py) on a real SQLite store, or on a
store that refuses writes while "full" (the fixtures ``on_sqlite`` and ``refused``:
tests/support/manager_stores.py):
while a change waits for the store the loop goes on and nobody sees the change; one the
store refuses is never shown, and the next pass or report makes it; two changes of one
task are saved in the order they were made. The job service's own writes:
tests/component/test_job_writes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cube.errors import Conflict, StoreFull
from cube.manager.api import create_app
from cube.manager.core import Manager
from cube.node import MachineStats, NodeState, Resources
from cube.protocol import JoinAnswer, NodeReport
from cube.scheduler import make_scheduler
from cube.store.sqlite import SqliteStore
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskRequest
from cube.task.state import State
from tests.support.fake_nodes import FakeWorkers
from tests.support.manager_stores import OnSqlite, Refused, turns, write_lock_held

WEB = TaskRequest(name="web", image="busybox", resources={"cpu": 1})


async def test_a_placement_is_shown_once_saved_and_the_loop_goes_on_while_it_waits(
    on_sqlite: OnSqlite,
) -> None:
    store, manager, workers = on_sqlite.store, on_sqlite.manager, on_sqlite.workers
    task, _ = await manager.submit(WEB)

    with on_sqlite.lock_held():
        placing = asyncio.create_task(manager.dispatch())
        await turns()  # the loop goes on: the placement waits on the store's thread
        assert not placing.done()
        assert manager.get(task.id).state is State.PENDING  # not saved: not shown
        assert store.get_task(task.id).state is State.PENDING
        assert manager.get_node("n1").allocated.cpu == 1  # but its resources are held
        assert workers.sent == []  # nor sent
    await placing

    assert manager.get(task.id).state is State.SCHEDULED
    assert store.get_task(task.id).node == "n1"
    assert manager.get_node("n1").allocated.cpu == 1  # counted once: placed, no longer held
    assert [r.id for _, r in workers.sent] == [task.id]


async def test_two_changes_of_one_task_are_saved_and_shown_in_the_order_made(
    on_sqlite: OnSqlite,
) -> None:
    store, manager = on_sqlite.store, on_sqlite.manager
    submitted, _ = await manager.submit(WEB)
    task = manager.tasks[submitted.id]  # the record
    task.reason = "before"  # (no awaits: as if saved)
    seen: list[str] = []

    def edit(text: str) -> Callable[[Task], list[TaskEvent]]:
        def change(draft: Task) -> list[TaskEvent]:
            seen.append(draft.reason)
            draft.reason = text
            return []

        return change

    with on_sqlite.lock_held():
        first = asyncio.create_task(manager.registry.change(task, edit("first")))
        second = asyncio.create_task(manager.registry.change(task, edit("second")))
        await turns()
        assert seen == ["before"]  # the second waits for the first to be saved
    assert await asyncio.gather(first, second) == [True, True]

    assert seen == ["before", "first"]  # and starts from its result
    assert manager.get(task.id).reason == store.get_task(task.id).reason == "second"


async def test_a_refused_placement_is_not_shown_and_the_next_pass_makes_it(
    refused: Refused,
) -> None:
    store, manager, workers = refused.store, refused.manager, refused.workers
    task, _ = await manager.submit(WEB)

    store.full = True
    with pytest.raises(StoreFull):  # the dispatch loop logs it, and is started again
        await manager.dispatch()
    shown = manager.get(task.id)
    assert (shown.state, shown.node) == (State.PENDING, None)
    assert manager.get_node("n1").allocated.cpu == 0  # the held resources are given back
    assert workers.sent == []

    store.full = False
    await manager.dispatch()
    assert manager.get(task.id).state is State.SCHEDULED
    assert store.get_task(task.id).state is State.SCHEDULED


async def test_a_refused_node_report_is_not_shown_and_the_next_report_is_merged(
    refused: Refused,
) -> None:
    store, manager = refused.store, refused.manager
    task, _ = await manager.submit(WEB)
    await manager.dispatch()
    n1 = manager.nodes["n1"]
    running = manager.get(task.id)
    events = [TaskEvent(time=running.updated_at, state=State.RUNNING, reason="started")]
    running.state, running.container_id = State.RUNNING, "c0ffee"

    store.full = True
    with pytest.raises(StoreFull):  # its watch logs it, and asks for every task again
        await manager._reconcile(n1, [running], False, {task.id: events})
    assert manager.get(task.id).state is State.SCHEDULED

    store.full = False
    await manager._reconcile(n1, [running], False, {task.id: events})
    assert manager.get(task.id).state is State.RUNNING
    assert store.get_task(task.id).container_id == "c0ffee"


async def test_a_refused_drain_is_a_503_and_moves_nothing(refused: Refused) -> None:
    store, manager = refused.store, refused.manager
    task, _ = await manager.submit(WEB)
    await manager.dispatch()

    store.full = True
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        response = await client.post("/v1/nodes/n1/drain")
    assert response.status_code == 503
    assert response.json()["error"] == "store_full"
    n1 = manager.get_node("n1")
    assert (n1.drain, n1.state) == (False, NodeState.READY)
    assert manager.get(task.id).node == "n1"


async def test_a_refused_change_made_in_place_is_undone(refused: Refused) -> None:
    # A test's way, playing a node (and the job service's, for a task that has ended):
    # the record is changed first.
    store, manager = refused.store, refused.manager
    task, _ = await manager.submit(WEB)
    await manager.dispatch()
    record = manager.tasks[task.id]

    store.full = True
    manager._save(record, record.transition(State.RUNNING, "started"))
    await manager.registry.settled()

    assert manager.get(task.id).state is State.SCHEDULED  # what the store holds
    assert store.get_task(task.id).state is State.SCHEDULED


class Reporting(FakeWorkers):
    """Every address answers as a worker named ``n9``."""

    async def stats(self, address: str, *, wait: float | None = None) -> NodeReport:
        capacity = Resources(cpu=2, memory=1024**3, disk=1024**3)
        return NodeReport(name="n9", capacity=capacity, allocated=Resources(), stats=MachineStats())


async def test_two_workers_joining_under_one_new_name_while_the_store_waits_one_is_refused(
    tmp_path: Path,
) -> None:
    # Both find the name free before either is saved; the second's turn comes after the
    # first was saved, and it must then present the first's node secret (cube.manager.identity).
    store = SqliteStore(tmp_path / "cube.db")
    manager = Manager(store=store, scheduler=make_scheduler(), workers=Reporting())

    with write_lock_held(tmp_path / "cube.db"):
        joins = [
            asyncio.create_task(manager.register("n9", f"http://127.0.0.1:{port}", None))
            for port in (5001, 5002)
        ]
        await turns()
    first, second = await asyncio.gather(*joins, return_exceptions=True)

    assert isinstance(first, JoinAnswer)
    assert first.secret is not None
    assert isinstance(second, Conflict)
    assert store.get_node("n9").address == "http://127.0.0.1:5001"
    assert manager.get_node("n9").address == "http://127.0.0.1:5001"
    await manager.close()
    store.close()
