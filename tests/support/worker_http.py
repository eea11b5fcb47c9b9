"""A worker started as a real process, asked over HTTP: post a task, read it, wait for a state."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import api
from tests.support.waiting import wait_task_state


def post_task(url: str, spec: dict[str, Any]) -> httpx.Response:
    return api.post(f"{url}/v1/tasks", json=spec, timeout=30)


def task_of(url: str, task_id: str) -> dict[str, Any]:
    response = api.get(f"{url}/v1/tasks/{task_id}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_state(url: str, task_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    return wait_task_state(lambda: task_of(url, task_id), task_id, state, timeout=timeout)
