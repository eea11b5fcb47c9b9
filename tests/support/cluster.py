"""Asking a manager started as a real process, given as its AgentProcess: submit, list, wait
(with the manager's log when a wait fails), stop. The same reads by URL are
tests/support/manager_http.py's, which these use."""

from __future__ import annotations

import functools
from typing import Any

import httpx

from tests.support import api, manager_http
from tests.support.agents import AgentProcess
from tests.support.waiting import wait_for, wait_task_state


def submit(manager: AgentProcess, spec: dict[str, Any]) -> str:
    response = api.post(f"{manager.url}/v1/tasks", json=spec, timeout=30)
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "pending"
    return str(response.json()["id"])


def task_of(manager: AgentProcess, task_id: str) -> dict[str, Any]:
    return dict(manager_http.get_json(manager.url, f"/tasks/{task_id}"))


def tasks_of(manager: AgentProcess) -> dict[str, dict[str, Any]]:
    return manager_http.tasks_of(manager.url)


def wait_state(
    manager: AgentProcess, task_id: str, state: str, *, timeout: float = 30
) -> dict[str, Any]:
    read = functools.partial(task_of, manager, task_id)
    return wait_task_state(read, task_id, state, timeout=timeout, logs=manager.logs)


def stop(manager: AgentProcess, task_id: str) -> httpx.Response:
    return api.delete(f"{manager.url}/v1/tasks/{task_id}", timeout=60)


def wait_nodes(manager: AgentProcess, workers: list[AgentProcess]) -> dict[str, dict[str, Any]]:
    """Wait until the manager lists every worker as ready; return its nodes by name."""
    wanted = {w.name for w in workers}

    def joined() -> dict[str, dict[str, Any]] | None:
        nodes = {n["name"]: n for n in api.get(f"{manager.url}/v1/nodes", timeout=10).json()}
        ready = {name for name, n in nodes.items() if n["state"] == "ready"}
        return nodes if wanted <= ready else None

    return dict(wait_for(joined, timeout=30, what=f"nodes {sorted(wanted)} to join"))
