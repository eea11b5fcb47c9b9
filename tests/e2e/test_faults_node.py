"""Fault tolerance on one node: crashing containers, failing health checks, a restarted
worker, a host port taken outside Cube, a restarted Docker engine.

Real processes (a manager and one worker joined to it) and real Docker. Every test ends
with :func:`tests.support.invariants.assert_converges`: the manager's view matches what Docker
shows, exactly one container runs per Running task, and nothing is orphaned.

Recovery times are measured and printed (``pytest -s`` shows them), never asserted:
they depend on the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.cli import cube
from tests.support.engine import IMAGE, containers_of, docker, sleeper
from tests.support.invariants import assert_converges
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

Json = dict[str, Any]


# --- helpers --------------------------------------------------------------------------------------


def httpd(name: str, **extra: Any) -> Json:
    """A web server answering /index.html on its port 8080, checked over HTTP."""
    return {
        "name": name,
        "image": IMAGE,
        "command": ["sh", "-c", "echo ok > /tmp/index.html; httpd -f -p 8080 -h /tmp"],
        "health": {"http": {"port": 8080, "path": "/index.html"}, "interval": "500ms"},
        "stop_timeout": "1s",  # sh is PID 1 and ignores SIGTERM: do not wait 5s for nothing
        **extra,
    }


def timestamp(event: Json) -> float:
    return datetime.fromisoformat(event["time"]).timestamp()


def docker_time(value: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as a Unix time."""
    head, _, fraction = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}+00:00").timestamp() + float(f"0.{fraction or 0}")


def states(events: list[Json]) -> list[str]:
    return [e["state"] for e in events]


def report(what: str, seconds: float) -> None:
    print(f"\n[recovery] {what}: {seconds:.2f}s")


@dataclass
class Cluster:
    """A manager and one worker joined to it, seen through the manager's API."""

    manager: AgentProcess
    worker: AgentProcess

    def submit(self, spec: Json) -> str:
        response = api.post(f"{self.manager.url}/v1/tasks", json=spec, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def task(self, task_id: str) -> Json:
        response = api.get(f"{self.manager.url}/v1/tasks/{task_id}", timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def events(self, task_id: str) -> list[Json]:
        response = api.get(f"{self.manager.url}/v1/tasks/{task_id}/events", timeout=10)
        assert response.status_code == 200, response.text
        return list(response.json())

    def worker_tasks(self) -> dict[str, Json]:
        """What the worker itself says it runs."""
        response = api.get(f"{self.worker.url}/v1/tasks", timeout=10)
        assert response.status_code == 200, response.text
        return {t["id"]: t for t in response.json()}

    def wait(
        self, task_id: str, until: Callable[[Json], bool], *, what: str, timeout: float = 30
    ) -> Json:
        def reached() -> Json | None:
            task = self.task(task_id)
            return task if until(task) else None

        try:
            return dict(wait_for(reached, timeout=timeout, what=f"task {task_id}: {what}"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def wait_state(self, task_id: str, state: str, *, timeout: float = 30) -> Json:
        return self.wait(task_id, lambda t: t["state"] == state, what=state, timeout=timeout)

    def converges(self, expected: dict[str, str], *, timeout: float = 30) -> None:
        try:
            assert_converges(self.manager.url, [self.worker.name], expected, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        return (
            f"--- worker log ---\n{self.worker.logs()[-3000:]}\n"
            f"--- manager log ---\n{self.manager.logs()[-3000:]}"
        )


@pytest.fixture
def cluster(start_manager: Any, start_worker: Any) -> Cluster:
    manager = start_manager()
    worker = start_worker("--manager", manager.url)

    def joined() -> bool:
        nodes = api.get(f"{manager.url}/v1/nodes", timeout=10).json()
        return any(n["name"] == worker.name and n["state"] == "ready" for n in nodes)

    wait_for(joined, timeout=30, what=f"{worker.name} to join the manager")
    return Cluster(manager, worker)


# --- 1. restart policies, through the manager -----------------------------------------------------
def test_on_failure_restarts_twice_with_growing_delays_then_gives_up(cluster: Cluster) -> None:
    task_id = cluster.submit(
        {
            "name": "flaky",
            "image": IMAGE,
            "command": ["sh", "-c", "exit 4"],
            "restart": {"policy": "on-failure", "max_attempts": 2, "delay": "200ms", "backoff": 2},
        }
    )

    task = cluster.wait(
        task_id, lambda t: t["state"] == "failed" and "gave up" in t["reason"], what="gave up"
    )

    assert task["restarts"] == 2
    assert task["exit_code"] == 4
    events = cluster.events(task_id)
    assert states(events).count("running") == 3  # the first run and two restarts
    failures = [e for e in events if e["state"] == "failed"]
    assert [e["exit_code"] for e in failures] == [4, 4, 4]
    # Each restart waits after the failure before going back to Scheduled: 0.2s, then 0.4s.
    gaps = []
    for failed in failures[:2]:
        rescheduled = next(
            e for e in events if e["state"] == "scheduled" and timestamp(e) > timestamp(failed)
        )
        gaps.append(timestamp(rescheduled) - timestamp(failed))
    assert gaps[0] >= 0.2 * 0.9, gaps
    assert gaps[1] >= 0.4 * 0.9, gaps
    assert gaps[1] > gaps[0], gaps
    cluster.converges({task_id: "failed"})


def test_always_restarts_a_container_that_exits_zero(cluster: Cluster) -> None:
    task_id = cluster.submit(
        {
            "name": "again",
            "image": IMAGE,
            "command": ["sh", "-c", "sleep 0.3"],
            "restart": {"policy": "always", "delay": "100ms", "backoff": 1},
            "stop_timeout": "1s",
        }
    )

    cluster.wait(
        task_id,
        lambda t: t["restarts"] >= 2 and t["state"] in ("running", "completed"),
        what="restarted twice",
    )

    events = cluster.events(task_id)
    completions = [e for e in events if e["state"] == "completed"]
    assert len(completions) >= 2
    assert all(e["exit_code"] == 0 for e in completions)
    assert states(events).count("running") >= 3
    assert not any(e["state"] == "failed" for e in events)

    response = api.delete(f"{cluster.manager.url}/v1/tasks/{task_id}", timeout=60)
    assert response.status_code == 200, response.text
    cluster.converges({task_id: "completed"})
    cluster.wait(task_id, lambda t: t["container_id"] is None, what="container removed")
    assert containers_of(f"cube.task-id={task_id}") == []


def test_a_killed_container_is_running_again_soon(cluster: Cluster) -> None:
    delay = 0.2
    task_id = cluster.submit(sleeper("crashy", restart={"policy": "on-failure", "delay": "200ms"}))
    first = cluster.wait_state(task_id, "running")

    killed_at = time.time()
    docker("kill", "--signal", "KILL", first["container_id"])
    again = cluster.wait(
        task_id, lambda t: t["state"] == "running" and t["restarts"] == 1, what="running again"
    )
    seen_at = time.time()

    assert again["container_id"] != first["container_id"]
    events = cluster.events(task_id)
    assert [e["exit_code"] for e in events if e["state"] == "failed"] == [137]
    failed = next(e for e in events if e["state"] == "failed")
    running_again = [e for e in events if e["state"] == "running"][-1]
    report("container crash -> worker noticed it", timestamp(failed) - killed_at)
    report(
        f"container crash -> Running again on the worker (minus the {delay:g}s restart delay)",
        timestamp(running_again) - killed_at - delay,
    )
    report(
        f"container crash -> Running again per the manager (minus the {delay:g}s delay)",
        seen_at - killed_at - delay,
    )
    cluster.converges({task_id: "running"})


# --- 2. health checks -----------------------------------------------------------------------------
def test_http_check_makes_the_task_running_and_healthy(cluster: Cluster) -> None:
    task_id = cluster.submit(httpd("web"))

    task = cluster.wait_state(task_id, "running")

    assert task["health"] == "healthy"
    events = cluster.events(task_id)
    assert states(events) == ["pending", "scheduled", "running"]  # Scheduled until healthy
    assert events[-1]["reason"].startswith("healthy"), events[-1]
    started = docker_time(docker("inspect", "-f", "{{.State.StartedAt}}", task["container_id"]))
    assert timestamp(events[-1]) >= started  # Running only after a probe of the started container
    cluster.converges({task_id: "running"})


def test_a_check_that_never_passes_fails_the_task_unhealthy(cluster: Cluster) -> None:
    task_id = cluster.submit(
        sleeper(
            "deaf",
            health={"tcp": {"port": 9999}, "interval": "300ms", "failure_threshold": 2},
            restart={"policy": "on-failure", "max_attempts": 1, "delay": "200ms"},
        )
    )

    task = cluster.wait(
        task_id, lambda t: t["state"] == "failed" and "gave up" in t["reason"], what="gave up"
    )

    assert task["health"] == "unhealthy"
    assert "unhealthy" in task["reason"]
    assert task["restarts"] == 1
    events = cluster.events(task_id)
    assert "running" not in states(events)  # never healthy: never Running
    failures = [e for e in events if e["state"] == "failed"]
    assert len(failures) == 2
    assert all(e["reason"].startswith("unhealthy") for e in failures), failures
    cluster.converges({task_id: "failed"})


def test_a_task_that_turns_unhealthy_is_restarted_and_healthy_again(cluster: Cluster) -> None:
    task_id = cluster.submit(httpd("sick", restart={"policy": "on-failure", "delay": "200ms"}))
    first = cluster.wait(
        task_id, lambda t: t["state"] == "running" and t["health"] == "healthy", what="healthy"
    )

    docker("exec", first["container_id"], "rm", "/tmp/index.html")  # now every check gets 404

    again = cluster.wait(
        task_id,
        lambda t: t["restarts"] == 1 and t["state"] == "running" and t["health"] == "healthy",
        what="restarted and healthy again",
    )
    assert again["container_id"] != first["container_id"]
    events = cluster.events(task_id)
    failures = [e for e in events if e["state"] == "failed"]
    assert len(failures) == 1
    assert failures[0]["reason"].startswith("unhealthy"), failures[0]
    assert "404" in failures[0]["reason"]
    assert states(events)[-3:] == ["failed", "scheduled", "running"]
    cluster.converges({task_id: "running"})


def test_an_unhealthy_server_that_exits_0_on_sigterm_is_restarted(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Many servers exit 0 on SIGTERM: stopped for failing its check, it failed all the same."""
    spec = tmp_path / "polite.json"
    spec.write_text(
        json.dumps(
            {
                "name": "polite",
                "image": IMAGE,
                # httpd answers, but not on the checked path; the trap ends the stop with 0.
                "command": ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /tmp & wait"],
                "health": {
                    "http": {"port": 8080, "path": "/missing"},
                    "interval": "300ms",
                    "failure_threshold": 2,
                },
                "restart": {"policy": "on-failure", "max_attempts": 1, "delay": "200ms"},
                "stop_timeout": "10s",  # a SIGKILL would end it with 137, not 0
            }
        )
    )

    # `cube run --wait` waits through the restart and ends when the task gives up.
    result = cube("run", str(spec), "--wait", "--timeout", "30s", addr=cluster.manager.url)

    assert result.returncode == 1, (result.stdout, result.stderr)
    task_id = result.stdout.strip()
    assert "gave up after 1 of 1 restarts" in result.stderr, result.stderr
    task = cluster.wait(
        task_id, lambda t: t["state"] == "failed" and "gave up" in t["reason"], what="gave up"
    )
    assert task["restarts"] == 1
    failures = [e for e in cluster.events(task_id) if e["state"] == "failed"]
    assert [e["exit_code"] for e in failures] == [0, 0]
    assert all(e["reason"].startswith("unhealthy") for e in failures), failures
    cluster.converges({task_id: "failed"})


# --- 3. the worker restarts -----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_restarted_worker_adopts_its_running_containers(cluster: Cluster, how: str) -> None:
    task_ids = [cluster.submit(sleeper(f"keep{i}")) for i in range(2)]
    before = {tid: cluster.wait_state(tid, "running")["container_id"] for tid in task_ids}

    if how == "sigterm":
        assert cluster.worker.terminate() == 0
    else:
        cluster.worker.kill()
    for tid, container in before.items():
        assert containers_of(f"cube.task-id={tid}", running_only=True) == [container]
    cluster.worker.start()

    on_worker = cluster.worker_tasks()
    for tid, container in before.items():
        assert on_worker[tid]["state"] == "running"
        assert on_worker[tid]["container_id"] == container
        assert containers_of(f"cube.task-id={tid}") == [container]  # no second container
    cluster.converges(dict.fromkeys(task_ids, "running"))
    for tid, container in before.items():
        task = cluster.task(tid)
        assert (task["container_id"], task["restarts"]) == (container, 0)


def test_a_container_that_dies_while_the_worker_is_away_gets_its_true_state(
    cluster: Cluster,
) -> None:
    doomed = cluster.submit(sleeper("doomed"))  # restart policy: never
    bystander = cluster.submit(sleeper("bystander"))
    doomed_container = cluster.wait_state(doomed, "running")["container_id"]
    bystander_container = cluster.wait_state(bystander, "running")["container_id"]

    assert cluster.worker.terminate() == 0
    docker("kill", "--signal", "KILL", doomed_container)
    cluster.worker.start()

    task = cluster.wait_state(doomed, "failed")
    assert task["exit_code"] == 137
    assert task["restarts"] == 0
    assert cluster.events(doomed)[-1]["exit_code"] == 137
    assert cluster.worker_tasks()[doomed]["exit_code"] == 137
    cluster.converges({doomed: "failed", bystander: "running"})
    assert cluster.task(bystander)["container_id"] == bystander_container


# --- 3b. a host port taken outside Cube ----------------------------------------------------------
def test_a_host_port_taken_outside_cube_keeps_the_task_pending_until_freed(
    cluster: Cluster, held_port: socket.socket
) -> None:
    port = int(held_port.getsockname()[1])

    def reported() -> bool:
        nodes = api.get(f"{cluster.manager.url}/v1/nodes", timeout=10).json()
        return any(port in n["ports_in_use"] for n in nodes)

    wait_for(reported, what=f"the manager to learn that port {port} is in use")
    task_id = cluster.submit(httpd("web", ports=[f"{port}:8080"]))

    task = cluster.wait(task_id, lambda t: t["state"] == "pending" and t["reason"], what="why")
    assert task["reason"] == f"host port {port} is in use on {cluster.worker.name}"
    assert task["reason"] in " ".join(
        cube("status", task_id, addr=cluster.manager.url).stdout.split()
    )
    assert containers_of(f"cube.task-id={task_id}") == []

    held_port.close()
    running = cluster.wait_state(task_id, "running")  # placed once the worker reports it free
    assert running["ports"] == [{"container": 8080, "host": port, "protocol": "tcp", "host_ip": ""}]
    cluster.converges({task_id: "running"})


# --- 4. the Docker engine restarts under the worker ----------------------------------------------
@dataclass
class Engine:
    """The local dockerd, stopped and started again the way scripts/setup.sh starts it."""

    command: list[str]
    log: Path

    @classmethod
    def find(cls) -> Engine:
        pids = _dockerd_pids()
        assert pids, "no dockerd process found"
        pid = pids[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        command[0] = os.readlink(f"/proc/{pid}/exe").encode()  # absolute: PATH may lack sbin
        try:
            log = Path(os.readlink(f"/proc/{pid}/fd/1"))
        except OSError:
            log = Path("/nonexistent")
        if not log.is_file():
            log = Path(os.environ.get("CUBE_DOCKERD_LOG", "/var/log/cube-dockerd.log"))
        return cls([part.decode() for part in command], log)

    @staticmethod
    def answers() -> bool:
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return info.returncode == 0

    def stop(self, *, timeout: float = 60) -> None:
        """SIGTERM dockerd and wait until it is gone (it stops its containers first)."""
        for pid in _dockerd_pids():
            os.kill(pid, signal.SIGTERM)
        wait_for(
            lambda: not _dockerd_pids() and not self.answers(),
            timeout=timeout,
            interval=0.2,
            what="dockerd to stop",
        )

    def start(self) -> None:
        """Fully detached: own session, no stdin, none of pytest's stdout or stderr."""
        line = f"setsid {shlex.join(self.command)} >>{shlex.quote(str(self.log))} 2>&1 </dev/null &"
        subprocess.run(
            ["bash", "-c", line],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )

    def wait_up(self, *, timeout: float = 90) -> None:
        wait_for(self.answers, timeout=timeout, interval=0.2, what="dockerd to answer")

    def ensure_running(self, *, timeout: float = 120) -> None:
        """Whatever state a test left it in: dockerd running and answering again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            if not _dockerd_pids():
                self.start()
                self.wait_up(timeout=max(1.0, deadline - time.monotonic()))
                return
            time.sleep(0.5)  # still starting, or still stopping: look again
        raise AssertionError(f"dockerd is not answering after {timeout}s; see {self.log}")


def _dockerd_pids() -> list[int]:
    result = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, timeout=10)
    return [int(pid) for pid in result.stdout.split()]


@pytest.fixture
def engine(docker_engine: None, start_worker: Any) -> Iterator[Engine]:
    """The Docker engine, guaranteed running again after the test, pass or fail.

    It depends on ``start_worker`` so that it is torn down first: the engine is back
    before the workers' containers are removed.
    """
    found = Engine.find()
    try:
        yield found
    finally:
        found.ensure_running()


def trapping(name: str, code: int, *, health: bool = False) -> Json:
    """A task whose process ends with ``code`` on SIGTERM, as a stopping engine sends it
    (sh as PID 1 would ignore it, and hold the engine's shutdown up for 10 s).
    ``max_attempts: 1``: one counted failure more and it would end Failed for good."""
    serve = "echo ok > /tmp/index.html; httpd -f -p 8080 -h /tmp" if health else "sleep 600"
    return {
        "name": name,
        "image": IMAGE,
        "command": ["sh", "-c", f"trap 'exit {code}' TERM; {serve} & wait"],
        "restart": {"policy": "on-failure", "max_attempts": 1, "delay": "200ms"},
        "stop_timeout": "1s",
        **(
            {"health": {"http": {"port": 8080, "path": "/index.html"}, "interval": "500ms"}}
            if health
            else {}
        ),
    }


@pytest.mark.timeout(300)
def test_an_engine_restart_costs_no_task_a_restart_attempt(
    engine: Engine, cluster: Cluster
) -> None:
    tasks = {
        cluster.submit(trapping("survivor", 143)): "exits 143",
        cluster.submit(trapping("polite", 0)): "exits 0",  # on-failure: restarted all the same
        cluster.submit(trapping("web", 143, health=True)): "health-checked",
    }
    before = {tid: cluster.wait_state(tid, "running")["container_id"] for tid in tasks}

    stopping_at = time.time()
    engine.stop()
    stopped_at = time.time()
    engine.start()
    engine.wait_up()
    up_at = time.time()

    again = {
        tid: cluster.wait(
            tid,
            lambda t, old=old: t["state"] == "running" and t["container_id"] != old,
            what=f"{what}: running again after the engine restart",
            timeout=90,
        )
        for (tid, what), old in zip(tasks.items(), before.values(), strict=True)
    }
    running_at = time.time()
    report("engine stop (SIGTERM -> gone)", stopped_at - stopping_at)
    report("engine start (started -> answering)", up_at - stopped_at)
    report("engine answering -> every task Running again (per the manager)", running_at - up_at)

    for tid, task in again.items():
        assert task["restarts"] == 0, (tasks[tid], cluster.events(tid))
        events = cluster.events(tid)
        ended = [e for e in events if e["state"] in ("failed", "completed")]
        assert ended, events  # the engine stopped it, and the history says so
        restarted = [e["reason"] for e in events if e["state"] == "scheduled"][1:]
        assert restarted, events
        assert all("engine restarted or unreachable, not counted" in r for r in restarted), events
    cluster.converges(dict.fromkeys(tasks, "running"))
    for tid, task in again.items():
        on_worker = cluster.worker_tasks()[tid]
        assert (on_worker["state"], on_worker["restarts"]) == ("running", 0)
        assert containers_of(f"cube.task-id={tid}", running_only=True) == [task["container_id"]]
    # The worker keeps talking to the new engine: a fresh task runs too, and a crash now
    # is the task's own: counted.
    fresh = cluster.submit(sleeper("after-restart"))
    cluster.wait_state(fresh, "running")
    survivor = next(iter(tasks))
    docker("kill", "--signal", "KILL", again[survivor]["container_id"])
    cluster.wait(survivor, lambda t: t["restarts"] == 1, what="a counted restart")
    cluster.converges({**dict.fromkeys(tasks, "running"), fresh: "running"})
