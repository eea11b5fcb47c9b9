"""Submitting a task: saved off the loop before it is listed, one submission of an ID at
a time (pure logic on a real SQLite store, whose saves run on the store's thread)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cube.errors import Conflict
from cube.manager.core import Manager
from cube.scheduler import make_scheduler
from cube.store import SqliteStore
from cube.task.spec import TaskRequest


async def test_two_submissions_of_one_id_at_once_make_one_task(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cube.db")
    manager = Manager(store=store, scheduler=make_scheduler())
    request = TaskRequest(id="web-1", name="web", image="busybox")

    (first, created), (second, again) = await asyncio.gather(
        manager.submit(request), manager.submit(request)
    )

    assert (created, again) == (True, False)
    assert first == second
    assert [e.reason for e in store.task_events("web-1")] == ["submitted"]
    await manager.close()
    store.close()


async def test_a_second_spec_under_an_id_being_submitted_is_a_conflict(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cube.db")
    manager = Manager(store=store, scheduler=make_scheduler())
    web = TaskRequest(id="t-1", name="web", image="busybox")
    other = TaskRequest(id="t-1", name="other", image="busybox")

    results = await asyncio.gather(
        manager.submit(web), manager.submit(other), return_exceptions=True
    )

    assert isinstance(results[1], Conflict)
    assert store.get_task("t-1").name == "web"
    assert not manager.registry.guards.busy("t-1")  # every turn given back
    await manager.close()
    store.close()


async def test_a_submission_is_listed_only_once_saved(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cube.db")
    manager = Manager(store=store, scheduler=make_scheduler())
    submitting = asyncio.create_task(manager.submit(TaskRequest(name="web", image="busybox")))
    await asyncio.sleep(0)  # the save is on the store's thread now
    assert manager.list_tasks() == []
    task, _ = await submitting
    assert [t.id for t in manager.list_tasks()] == [task.id] == [t.id for t in store.list_tasks()]
    await manager.close()
    store.close()
