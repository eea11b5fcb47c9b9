"""Asking a manager started as a real process, by its URL: tasks, nodes, waiting for states;
and setting up a small cluster of real workers with a short node timeout."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.engine import docker, sleeper
from tests.support.waiting import wait_for

#: Seconds of silence before the manager calls a node Down (the CLI default is 10).
NODE_TIMEOUT = 2.0


#: Worker flags for tests that restart the manager: a restart (a few seconds on a busy
#: machine) must not pass for a silence that stops every task.
PATIENT = ("--stop-after-disconnect", "60s")


def get_json(url: str, path: str) -> Any:
    response = api.get(f"{url}/v1{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def submit(url: str, name: str, **extra: Any) -> str:
    """Submit a sleeper that stops within a second; return its task ID."""
    response = api.post(f"{url}/v1/tasks", json=sleeper(name, **extra), timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def tasks_of(url: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in get_json(url, "/tasks")}


def node_states(url: str) -> dict[str, str]:
    return {n["name"]: n["state"] for n in get_json(url, "/nodes")}


def wait_node(url: str, name: str, state: str, *, timeout: float = 30) -> None:
    wait_for(
        lambda: node_states(url).get(name) == state,
        timeout=timeout,
        what=f"node {name} to be {state}",
    )


def wait_running(
    url: str, ids: Iterable[str], *, on: str | None = None, timeout: float = 30
) -> dict[str, dict[str, Any]]:
    """Wait until every task in ``ids`` is Running (on node ``on``, if given); return them."""
    ids = list(ids)

    def running() -> dict[str, dict[str, Any]] | None:
        tasks = tasks_of(url)
        wanted = {tid: tasks[tid] for tid in ids}
        ok = all(t["state"] == "running" and on in (None, t["node"]) for t in wanted.values())
        return wanted if ok else None

    where = f" on {on}" if on else ""
    return dict(wait_for(running, timeout=timeout, what=f"{len(ids)} tasks running{where}"))


def gone(container_ids: Iterable[str]) -> bool:
    """Whether Docker no longer has any of these containers (stopped *and* removed)."""
    return all(not docker("ps", "-aq", "--filter", f"id={cid}") for cid in container_ids)


def report(what: str, seconds: float) -> None:
    print(f"\n[recovery] {what}: {seconds:.1f} s")


def start_workers(
    start_worker: Any, manager_url: str, count: int, *extra: str
) -> list[AgentProcess]:
    with ThreadPoolExecutor(count) as pool:  # each takes a second or so to come up
        return list(
            pool.map(lambda _: start_worker("--manager", manager_url, *extra), range(count))
        )


def two_node_cluster(
    start_manager: Any, start_worker: Any, *worker_args: str
) -> tuple[AgentProcess, AgentProcess, AgentProcess]:
    """A manager with the short node timeout and two workers that joined it, both ready.

    The workers stop their tasks after the manager's node timeout of silence, unless
    ``worker_args`` say otherwise (a test that restarts the manager gives them longer)."""
    manager = start_manager("--node-timeout", str(NODE_TIMEOUT))
    a, b = start_workers(start_worker, manager.url, 2, *worker_args)
    for worker in (a, b):
        wait_node(manager.url, worker.name, "ready")
    return manager, a, b
