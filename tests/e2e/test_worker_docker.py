"""The worker over real HTTP, running real Docker containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cube.node import Resources
from cube.runtime.docker import DockerRuntime
from cube.store.memory import MemoryStore
from cube.task.spec import TaskRequest
from cube.task.state import State
from cube.worker.agent import Worker
from tests.support import api
from tests.support.engine import (
    IMAGE,
    containers_of,
    docker,
    remove_containers,
    sleeper,
    unique_name,
)
from tests.support.ports import free_port
from tests.support.waiting import wait_for
from tests.support.worker_http import post_task, task_of, wait_state

pytestmark = pytest.mark.docker


def test_httpd_task_runs_and_answers_on_its_published_port(start_worker: Any) -> None:
    worker = start_worker()
    port = free_port()
    response = post_task(
        worker.url,
        {
            "name": "web",
            "image": IMAGE,
            "command": [
                "sh",
                "-c",
                "echo hello-from-cube > /tmp/index.html && httpd -f -p 8080 -h /tmp",
            ],
            "ports": [f"{port}:8080"],
        },
    )
    assert response.status_code == 201, response.text
    task = wait_state(worker.url, response.json()["id"], "running")
    assert task["ports"] == [{"container": 8080, "host": port, "protocol": "tcp", "host_ip": ""}]

    def answers() -> str | None:
        try:
            return api.get(f"http://127.0.0.1:{port}/index.html", timeout=2).text
        except httpx.HTTPError:
            return None

    assert "hello-from-cube" in wait_for(answers, what="httpd to answer")
    assert containers_of(f"cube.task-id={task['id']}", running_only=True) == [task["container_id"]]


def test_delete_stops_and_removes_the_container(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(worker.url, sleeper()).json()["id"]
    container = wait_state(worker.url, task_id, "running")["container_id"]

    response = api.delete(f"{worker.url}/v1/tasks/{task_id}", timeout=30)

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "completed"
    assert response.json()["reason"] == "stopped by user"
    assert docker("ps", "-aq", "--no-trunc", "--filter", f"id={container}") == ""


def test_failing_command_ends_failed_with_its_exit_code(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(
        worker.url, {"name": "crash", "image": IMAGE, "command": ["sh", "-c", "exit 3"]}
    ).json()["id"]
    task = wait_state(worker.url, task_id, "failed")
    assert task["exit_code"] == 3
    assert task["restarts"] == 0
    assert "exited with code 3" in task["reason"]


def test_on_failure_with_max_two_attempts_restarts_exactly_twice(start_worker: Any) -> None:
    worker = start_worker()
    spec = {
        "name": "flaky",
        "image": IMAGE,
        "command": ["sh", "-c", "exit 3"],
        "restart": {"policy": "on-failure", "max_attempts": 2, "delay": "100ms"},
    }
    task_id = post_task(worker.url, spec).json()["id"]

    def gave_up() -> dict[str, Any] | None:
        task = task_of(worker.url, task_id)
        return task if task["state"] == "failed" and "gave up" in task["reason"] else None

    task = wait_for(gave_up, what="the restart policy to give up")
    assert task["restarts"] == 2
    events = api.get(f"{worker.url}/v1/tasks/{task_id}/events", timeout=10).json()
    starts = [e for e in events if e["state"] == "running"]
    failures = [e for e in events if e["state"] == "failed"]
    assert len(starts) == 3  # the first run and two restarts
    assert [e["exit_code"] for e in failures] == [3, 3, 3]


def test_memory_and_cpu_limits_are_set_on_the_container(start_worker: Any) -> None:
    worker = start_worker()
    spec = sleeper(resources={"cpu": 0.5, "memory": "32MiB"})
    task = wait_state(worker.url, post_task(worker.url, spec).json()["id"], "running")
    inspect = json.loads(docker("inspect", task["container_id"]))[0]
    assert inspect["HostConfig"]["NanoCpus"] == 500_000_000
    assert inspect["HostConfig"]["Memory"] == 32 * 1024 * 1024
    labels = inspect["Config"]["Labels"]
    assert labels["cube.managed-by"] == "cube"
    assert labels["cube.task-id"] == task["id"]
    assert labels["cube.worker"] == worker.name


def test_worker_killed_and_restarted_adopts_its_running_container(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(worker.url, sleeper()).json()["id"]
    container = wait_state(worker.url, task_id, "running")["container_id"]

    worker.kill()
    assert containers_of(f"cube.task-id={task_id}", running_only=True) == [container]
    worker.start()

    task = task_of(worker.url, task_id)
    assert task["state"] == "running"
    assert task["container_id"] == container
    assert containers_of(f"cube.task-id={task_id}") == [container]  # no second container


def test_sigterm_stops_the_worker_and_leaves_containers_running(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(worker.url, sleeper()).json()["id"]
    container = wait_state(worker.url, task_id, "running")["container_id"]

    assert worker.terminate() == 0
    assert containers_of(f"cube.task-id={task_id}", running_only=True) == [container]


def test_worker_notices_a_container_that_dies_while_it_is_away(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(worker.url, sleeper()).json()["id"]
    container = wait_state(worker.url, task_id, "running")["container_id"]
    worker.kill()
    docker("kill", "--signal", "KILL", container)
    worker.start()
    task = wait_state(worker.url, task_id, "failed")
    assert task["exit_code"] == 137


def test_container_exit_is_noticed_within_two_seconds(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(worker.url, sleeper()).json()["id"]
    container = wait_state(worker.url, task_id, "running")["container_id"]
    docker("kill", "--signal", "KILL", container)
    task = wait_state(worker.url, task_id, "failed", timeout=2.0)
    assert task["exit_code"] == 137


def test_bad_spec_gets_422_naming_the_field(start_worker: Any) -> None:
    worker = start_worker()
    response = post_task(worker.url, {"name": "x", "image": IMAGE, "resources": {"memory": "lots"}})
    assert response.status_code == 422
    body = response.json()
    assert [f["field"] for f in body["fields"]] == ["resources.memory"]
    assert "resources.memory" in body["message"]

    response = api.post(f"{worker.url}/v1/tasks", content=b"{not json", timeout=10)
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "body"
    assert api.get(f"{worker.url}/v1/tasks", timeout=10).json() == []


def test_unknown_ids_get_404(start_worker: Any) -> None:
    worker = start_worker()
    for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/events"), ("GET", "/logs")]:
        response = api.request(method, f"{worker.url}/v1/tasks/nope{path}", timeout=10)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "not_found"


def test_post_is_idempotent_for_the_same_task_id(start_worker: Any) -> None:
    worker = start_worker()
    spec = sleeper(id="fixed-id-1")
    first = post_task(worker.url, spec)
    second = post_task(worker.url, spec)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == "fixed-id-1"
    wait_state(worker.url, "fixed-id-1", "running")
    assert len(containers_of("cube.task-id=fixed-id-1")) == 1

    other = post_task(worker.url, {**spec, "command": ["sleep", "1"]})
    assert other.status_code == 409


def test_logs_and_stats(start_worker: Any) -> None:
    worker = start_worker("--cpu", "1.5", "--memory", "1GiB")
    spec = {"name": "talker", "image": IMAGE, "command": ["sh", "-c", "echo out; echo err >&2"]}
    task_id = post_task(worker.url, spec).json()["id"]
    wait_state(worker.url, task_id, "completed")
    logs = api.get(f"{worker.url}/v1/tasks/{task_id}/logs", timeout=10)
    assert logs.status_code == 200
    assert sorted(logs.text.splitlines()) == ["err", "out"]  # two pipes: order not kept

    post_task(worker.url, sleeper(resources={"cpu": 0.25, "memory": "16MiB"}))
    stats = api.get(f"{worker.url}/v1/stats", timeout=10).json()
    assert stats["capacity"]["cpu"] == 1.5
    assert stats["capacity"]["memory"] == 1024**3
    assert stats["allocated"] == {"cpu": 0.25, "memory": 16 * 1024**2, "disk": 0}
    assert stats["stats"]["memory_total"] > 0
    assert 0 <= stats["stats"]["cpu_percent"] <= 100


def test_missing_image_fails_the_task_with_the_engines_message(start_worker: Any) -> None:
    worker = start_worker()
    task_id = post_task(
        worker.url, {"name": "ghost", "image": "cube-test/does-not-exist:1"}
    ).json()["id"]
    task = wait_state(worker.url, task_id, "failed", timeout=60)
    assert "did not start" in task["reason"]
    assert "does-not-exist" in task["reason"]
    assert task["container_id"] is None


@dataclass
class SilentRegistry:
    """A "registry" on loopback that accepts connections and never answers: a pull from
    it hangs until the engine gives up (Docker waits ~30 s)."""

    address: str
    held: list[socket.socket]


@pytest.fixture
def silent_registry() -> Iterator[SilentRegistry]:
    server = socket.create_server(("127.0.0.1", 0), backlog=256)
    registry = SilentRegistry(f"127.0.0.1:{server.getsockname()[1]}", [])
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                registry.held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield registry
    stop.set()
    thread.join()
    for conn in [*registry.held, server]:
        conn.close()


def test_a_burst_of_tasks_shares_one_pull_and_a_stop_is_not_held_up_by_it(
    start_worker: Any, silent_registry: SilentRegistry
) -> None:
    """Regression: 120 tasks pulling from a registry that never answers made 120 pulls,
    which took every connection the worker had to the engine; a stop then waited for one
    (> 20 s, found by the API fuzzing). Now the tasks share one pull."""
    worker = start_worker()
    spec = {"name": "stuck", "image": f"{silent_registry.address}/never:1", "stop_timeout": "0s"}
    ids = [post_task(worker.url, spec).json()["id"] for _ in range(120)]

    stopped = api.delete(f"{worker.url}/v1/tasks/{ids[0]}", timeout=30)
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["state"], stopped.json()["reason"]) == ("completed", "stopped by user")

    # The others still wait for the one pull they share: stopping one did not cancel it.
    others = [task_of(worker.url, task_id) for task_id in ids[1:]]
    assert {t["state"] for t in others} == {"scheduled"}
    # One pull: the engine tries HTTPS, then plain HTTP, for a registry on loopback.
    assert len(silent_registry.held) <= 2, f"{len(silent_registry.held)} registry connections"


def test_a_port_taken_outside_cube_is_reported_and_named_when_docker_refuses(
    start_worker: Any, held_port: socket.socket
) -> None:
    squatter = int(held_port.getsockname()[1])
    worker = start_worker()

    def reported() -> bool:
        stats = api.get(f"{worker.url}/v1/stats", timeout=10).json()
        return squatter in stats["ports_in_use"]

    wait_for(reported, what=f"the worker to report port {squatter} in use")
    # Sent straight to the worker, as a placement made before the port was taken would be.
    task_id = post_task(
        worker.url,
        sleeper(
            "web",
            ports=[f"{squatter}:8080"],
            restart={"policy": "on-failure", "max_attempts": 1, "delay": "100ms"},
        ),
    ).json()["id"]

    task = wait_for(
        lambda: (
            (t := task_of(worker.url, task_id))["state"] == "failed"
            and "gave up" in t["reason"]
            and t
        ),
        what="the task to give up",
    )

    assert task["reason"].startswith("container did not start:"), task["reason"]
    assert "address already in use" in task["reason"], task["reason"]
    assert task["reason"].endswith("; gave up after 1 of 1 restarts")
    events = api.get(f"{worker.url}/v1/tasks/{task_id}/events", timeout=10).json()
    failed = [e["reason"] for e in events if e["state"] == "failed"]
    assert len(failed) == 2
    assert all(f"{squatter} failed" in r or "address already in use" in r for r in failed), failed
    assert containers_of(f"cube.task-id={task_id}") == []


class VanishingDocker(DockerRuntime):
    """The real engine, but the first container is removed between its create and its
    start, as another client might: the start is answered 404."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: list[str] = []

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if method == "POST" and path.endswith("/start") and not self.removed:
            container_id = path.split("/")[2]
            self.removed.append(container_id)
            await super()._call("DELETE", f"/containers/{container_id}", params={"force": "true"})
        return await super()._call(method, path, **kwargs)


async def test_a_container_removed_before_its_start_is_a_failed_attempt(
    docker_engine: None,
) -> None:
    runtime = VanishingDocker()
    name = unique_name()
    worker = Worker(
        name=name, runtime=runtime, store=MemoryStore(), capacity=Resources(cpu=2, memory=2**30)
    )
    await worker.start()
    try:
        task, _ = worker.submit(
            TaskRequest.model_validate(
                sleeper(restart={"policy": "on-failure", "max_attempts": 1, "delay": "100ms"})
            )
        )
        while worker.get(task.id).state is not State.RUNNING:
            assert task.id in worker.runners, worker.events(task.id)  # still supervised
            await asyncio.sleep(0.05)

        running = worker.get(task.id)
        assert running.restarts == 1
        failed = [e for e in worker.events(task.id) if e.state is State.FAILED]
        assert len(failed) == 1
        assert failed[0].reason.startswith("container did not start: No such container"), failed
        assert runtime.removed[0] != running.container_id
        assert containers_of(f"cube.task-id={task.id}") == [running.container_id]
    finally:
        await worker.close()
        await runtime.close()
        remove_containers(f"cube.worker={name}")
