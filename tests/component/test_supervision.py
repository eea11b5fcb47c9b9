"""Loops that crash are started again and reported; a change the store refused is undone.

Pure logic: asyncio, a store that refuses writes on demand, a node client without HTTP.
The same, end to end on a real full file system, is in tests/e2e/test_store_faults.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from cube import background
from cube.api.body import read_body
from cube.api.common import Health
from cube.api.errors import install_error_handlers
from cube.background import TROUBLE_WINDOW, Supervisor
from cube.errors import StoreFull
from cube.log import KeyValueFormatter
from cube.manager import Manager, WorkerClient
from cube.node import Node, Resources
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task
from cube.task.spec import TaskRequest
from cube.task.state import State
from tests.support.waiting import wait_until
from tests.support.worker import FullStore

GiB = 1024**3


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = KeyValueFormatter()
    return [formatter.format(r) for r in caplog.records]


async def test_a_crashed_loop_runs_again_and_its_trouble_is_reported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "FIRST_BACKOFF", 0.01)
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("disk on fire")

    supervisor = Supervisor("test")
    with caplog.at_level(logging.INFO, logger="cube"):
        await asyncio.wait_for(supervisor.start("flaky", flaky), 5)

    assert runs == 4  # three crashes, then a run that ended on its own: not run again
    trouble = supervisor.trouble["flaky"]
    assert (trouble.restarts, trouble.last_error) == (3, "RuntimeError: disk on fire")
    now = time.monotonic()
    assert supervisor.degraded(now)
    assert not supervisor.degraded(now + TROUBLE_WINDOW)
    health = Health(role="test", name="t").with_loops(supervisor, now)
    assert health.status == "degraded"
    assert health.loops["flaky"].restarts == 3
    # The traceback once, on one line; the same error again only says so.
    logged = [line for line in lines(caplog) if "loop=flaky" in line]
    assert len(logged) == 3
    assert "traceback=" in logged[0]
    assert "Traceback (most recent call last):\\n" in logged[0]
    assert "RuntimeError: disk on fire" in logged[0]
    assert all("traceback=" not in line for line in logged[1:])
    assert all("crashed again" in line for line in logged[1:])


async def test_a_crashed_background_call_logs_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def bug() -> None:
        raise KeyError("gone")

    with caplog.at_level(logging.ERROR, logger="cube"):
        task = background.spawn(bug(), "node call")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # the done callback runs on the next turn of the loop

    (line,) = [line for line in lines(caplog) if "background task crashed" in line]
    assert 'what="node call"' in line
    assert "Traceback (most recent call last):\\n" in line
    assert "KeyError: 'gone'" in line


async def test_a_500_logs_the_traceback_once_on_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="cube"):
        async with httpx.AsyncClient(transport=transport, base_url="http://cube") as client:
            response = await client.get("/boom")

    assert response.status_code == 500
    assert response.json()["message"] == "internal error; see the server's log"
    (line,) = [line for line in lines(caplog) if "unexpected error" in line]
    assert "\n" not in line
    assert "path=/boom" in line
    assert "Traceback (most recent call last):\\n" in line
    assert 'in boom\\n    raise ZeroDivisionError(\\"a bug\\")' in line


async def test_a_client_gone_before_its_body_came_is_one_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/tasks")
    async def submit(request: Request) -> Any:
        return await read_body(request)

    scope = {"type": "http", "method": "POST", "path": "/tasks", "headers": [], "query_string": b""}
    scope |= {"http_version": "1.1", "scheme": "http", "server": ("cube", 80), "root_path": ""}
    incoming = [
        {"type": "http.request", "body": b'{"name": ', "more_body": True},
        {"type": "http.disconnect"},  # the sender gave up half way through
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO, logger="cube"):
        await app(scope, receive, send)

    assert sent[0]["status"] == 400, sent
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    (line,) = [line for line in lines(caplog) if "client went away" in line]
    assert "path=/tasks" in line
    assert "Traceback" not in line


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert not await background.wait_event(event, 0.01)
    asyncio.get_running_loop().call_soon(event.set)
    assert await background.wait_event(event, 5)


async def test_a_loop_told_to_stop_as_it_is_woken_stops() -> None:
    """The cancel and the wake in the same turn of the event loop: on Python 3.11,
    asyncio.wait_for returned as if woken and the job loop ran on, so the manager's close()
    waited for ever (CPython gh-86296)."""
    manager = Manager(store=MemoryStore(), scheduler=make_scheduler(), workers=WorkerClient())
    job_loop = manager.jobs.loop
    running = asyncio.create_task(job_loop.run())
    await asyncio.sleep(0)  # it waits for a wake
    job_loop.wake()
    running.cancel()
    done, _ = await asyncio.wait([running], timeout=5)
    assert running in done
    assert running.cancelled()
    assert job_loop.passes == 0
    await manager.close()


class AcceptsEverything(WorkerClient):
    """A node that takes every task sent (no HTTP)."""

    async def run(self, address: str, request: TaskRequest) -> Task:
        return Task(id=request.id or "x", spec=request.spec())


async def test_a_placement_the_store_refused_is_undone_and_made_once_there_is_space() -> None:
    store = FullStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=Resources(cpu=4, memory=GiB)))
    manager = Manager(store=store, scheduler=make_scheduler(), workers=AcceptsEverything())
    task, _ = await manager.submit(TaskRequest(name="a", image="busybox", resources={"cpu": 1}))

    store.full = True
    with pytest.raises(StoreFull):
        await manager.submit(TaskRequest(name="b", image="busybox"))
    assert [t.name for t in manager.list_tasks()] == ["a"]  # b was not saved: not listed
    with pytest.raises(StoreFull):
        await manager.dispatch()
    shown = manager.get(task.id)
    assert (shown.state, shown.node, shown.reason) == (State.PENDING, None, "")
    assert manager.get_node("n1").allocated.cpu == 0
    assert (
        manager.tasks_json()
        == b"[" + manager.tasks[task.id].model_dump_json(exclude={"placement"}).encode() + b"]"
    )

    store.full = False
    await manager.dispatch()
    assert manager.get(task.id).state is State.SCHEDULED
    assert store.get_task(task.id).node == "n1"
    assert manager.get_node("n1").allocated.cpu == 1
    await manager.close()


async def test_the_dispatch_loop_survives_a_full_store_and_places_once_space_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(background, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(background, "MAX_BACKOFF", 0.05)
    store = FullStore()
    # Its loops call the node too: nothing listens at this address (refused at once).
    node = Node(name="n1", address="http://127.0.0.1:1", capacity=Resources(cpu=4, memory=GiB))
    store.save_node(node)
    manager = Manager(store=store, scheduler=make_scheduler(), workers=AcceptsEverything())
    await manager.start()
    try:
        task, _ = await manager.submit(TaskRequest(name="a", image="busybox"))
        store.full = True  # before the dispatch pass that the submission woke runs

        await wait_until(lambda: "dispatch" in manager.loops.trouble)
        assert manager.loops.degraded(time.monotonic())
        assert manager.get(task.id).state is State.PENDING

        store.full = False

        await wait_until(lambda: manager.get(task.id).state is State.SCHEDULED)
        assert manager.loops.trouble["dispatch"].last_error == (
            "cannot save: disk full at /data/cube.db"
        )
    finally:
        await manager.close()


class FullNode(WorkerClient):
    """A node whose store is full: it refuses every task sent (no HTTP)."""

    sent = 0

    async def run(self, address: str, request: TaskRequest) -> Task:
        self.sent += 1
        raise StoreFull("cannot save: disk full at /node/cube.db")


async def test_a_task_a_full_node_refused_waits_for_a_change_of_the_cluster() -> None:
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=Resources(cpu=4, memory=GiB)))
    node = FullNode()
    manager = Manager(store=store, scheduler=make_scheduler(), workers=node)
    task, _ = await manager.submit(TaskRequest(name="a", image="busybox"))

    await manager.dispatch()
    shown = manager.get(task.id)
    assert (shown.state, shown.reason) == (
        State.PENDING,
        "could not start on n1: " + ("cannot save: disk full at /node/cube.db"),
    )
    await manager.dispatch()  # nothing changed: not sent again, in a loop against the node
    assert node.sent == 1
    await manager.undrain("n1")  # a change of the cluster (as a node joining or a task ending)
    await manager.dispatch()
    assert node.sent == 2
    await manager.close()
