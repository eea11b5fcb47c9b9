"""Deployments end to end: real manager and worker processes, real Docker, the real CLI.

A 3-allocation HTTP service (busybox httpd answering its VERSION, checked over HTTP) is
updated while a poller hits every allocation's published port every 50 ms
(:class:`Poller`): rolling updates in both orders, a bad version that auto-reverts, canaries
promoted and failed, and a manager killed with SIGKILL mid-deployment. Short deadlines
and one worker keep each test to a few tens of seconds.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.engine import IMAGE, containers_of
from tests.support.jobs import assert_job_converges, cube
from tests.support.manager_http import PATIENT, get_json, wait_node
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker

#: Short, but with room for a busy machine: a deadline only costs time when it is missed.
FAST = {"min_healthy_time": "1s", "healthy_deadline": "20s", "progress_deadline": "60s"}
#: Ticks of the poller.
TICK = 0.05


def web_job(
    tmp_path: Path, version: str, *, health_port: int = 8080, count: int = 3, **update: Any
) -> Path:
    """Job ``web``: ``count`` httpd serving ``version``; the check probes ``health_port``."""
    serve = f"echo {version} > /tmp/index.html; httpd -f -p 8080 -h /tmp"
    spec = {
        "job": "web",
        "update": {**FAST, **update},
        "groups": [
            {
                "name": "http",
                "count": count,
                "tasks": [
                    {
                        "name": "httpd",
                        "image": IMAGE,
                        "command": ["sh", "-c", serve],
                        "env": {"VERSION": version},
                        "ports": ["8080"],
                        # failure_threshold: a bad version stays "starting", never restarted,
                        # so that it is healthy_deadline that fails it.
                        "health": {
                            "http": {"port": health_port, "path": "/index.html"},
                            "interval": "300ms",
                            "failure_threshold": 100,
                        },
                        "stop_timeout": "1s",
                        "resources": {"cpu": 0.05, "memory": "16MiB"},
                    }
                ],
            }
        ],
    }
    path = tmp_path / f"web-{version}.json"
    path.write_text(json.dumps(spec))
    return path


def live_allocs(url: str, job: str = "web") -> list[dict[str, Any]]:
    return [
        a
        for a in get_json(url, f"/allocations?job={job}")
        if a["desired"] == "run" and a["status"] in ("pending", "running")
    ]


def three_live(url: str) -> list[dict[str, Any]] | None:
    live = live_allocs(url)
    return live if len(live) == 3 else None


def deployments(url: str, job: str = "web") -> list[dict[str, Any]]:
    return list(get_json(url, f"/jobs/{job}/deployments"))


def containers(alloc: dict[str, Any]) -> list[str]:
    """The running containers of an allocation's tasks, as Docker sees them."""
    return [
        c
        for t in alloc["tasks"].values()
        for c in containers_of(f"cube.task-id={t['id']}", running_only=True)
    ]


@dataclass
class Poller:
    """Hits the published port of every allocation of the job every 50 ms, in a thread.

    Allocations are found from the manager every 0.25 s (their tasks' published ports);
    a port found once is hit until the end, so a stopped allocation counts as silent.
    ``ticks``: per tick, the time and what each port answered (None: no answer).
    """

    url: str
    job: str = "web"
    ports: dict[str, int] = field(default_factory=dict)  # task ID -> host port
    ticks: list[tuple[float, list[str | None]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Poller:
        self._discover()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _discover(self) -> None:
        for alloc in get_json(self.url, f"/allocations?job={self.job}"):
            for t in alloc["tasks"].values():
                if t["id"] in self.ports or t["state"] != "running":
                    continue
                task = get_json(self.url, f"/tasks/{t['id']}")
                published = [p["host"] for p in task["ports"] if p["container"] == 8080]
                if published:
                    self.ports[t["id"]] = published[0]

    def _run(self) -> None:
        last_look = time.monotonic()
        with httpx.Client(timeout=1.0) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                answers: list[str | None] = []
                for port in list(self.ports.values()):
                    try:
                        r = http.get(f"http://127.0.0.1:{port}/index.html")
                        answers.append(r.text.strip() if r.status_code == 200 else None)
                    except httpx.HTTPError:
                        answers.append(None)
                self.ticks.append((started, answers))
                if started - last_look >= 0.25:
                    self._discover()
                    last_look = time.monotonic()
                self._stop.wait(max(0.0, TICK - (time.monotonic() - started)))

    def fewest_answering(self) -> int:
        return min(sum(a is not None for a in answers) for _, answers in self.ticks)

    def answers_after(self, when: float) -> set[str]:
        return {a for t, answers in self.ticks if t >= when for a in answers if a is not None}


def one_worker_cluster(
    start_manager: Any, start_worker: Any, *worker_args: str
) -> tuple[AgentProcess, AgentProcess]:
    manager = start_manager()
    worker = start_worker("--manager", manager.url, *worker_args)
    wait_node(manager.url, worker.name, "ready")
    return manager, worker


def run_ok(manager: AgentProcess, path: Path, *extra: str) -> str:
    ran = cube(manager, "job", "run", str(path), *extra, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout


# --- rolling updates ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_a_rolling_update_never_drops_below_two_of_three_and_ends_on_the_new_version(
    start_manager: Any, start_worker: Any, tmp_path: Path, order: str
) -> None:
    manager, worker = one_worker_cluster(start_manager, start_worker)
    out = run_ok(manager, web_job(tmp_path, "one", order=order))
    assert "deployment of version 1: Successful: all 3 allocations of version 1 healthy" in out

    poller = Poller(manager.url).start()
    try:
        wait_for(lambda: len(poller.ports) == 3, timeout=10, what="the 3 ports of version 1")
        out = run_ok(manager, web_job(tmp_path, "two", order=order))
        ended = time.monotonic()
        time.sleep(1)  # a second of answers after the end
    finally:
        poller.stop()

    assert "deployment of version 2: Successful: all 3 allocations of version 2 healthy" in out
    assert len(poller.ticks) > 40, "the poller polled"
    assert poller.fewest_answering() >= 2, poller.ticks
    assert poller.answers_after(ended) == {"two"}
    assert len(poller.ports) == 6  # it saw every allocation: 3 old, 3 new
    new = live_allocs(manager.url)
    assert sorted(a["index"] for a in new) == [0, 1, 2]
    assert {a["version"] for a in new} == {2}
    assert_job_converges(manager, "web", [worker])


# --- a bad version --------------------------------------------------------------------------------
def test_a_bad_version_fails_at_healthy_deadline_and_auto_revert_stops_no_old_allocation(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    """Version 1 asks for a canary (unused: nothing to replace then); the revert to it must
    not run one. Version 2's check probes a port nothing listens on: never healthy."""
    manager, worker = one_worker_cluster(start_manager, start_worker)
    policy = {"order": "start-first", "auto_revert": True}
    run_ok(manager, web_job(tmp_path, "one", canary=1, **policy))
    old = {a["id"]: containers(a) for a in live_allocs(manager.url)}
    assert len(old) == 3
    assert all(len(c) == 1 for c in old.values())

    poller = Poller(manager.url).start()
    try:
        wait_for(lambda: len(poller.ports) == 3, timeout=10, what="the 3 ports of version 1")
        bad = web_job(tmp_path, "bad", health_port=9999, healthy_deadline="5s", **policy)
        ran = cube(manager, "job", "run", str(bad))
    finally:
        poller.stop()

    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert (
        "deployment of version 2 rolled back: web.http[0] was not healthy within"
        " healthy_deadline 5s; rolled back to version 1"
    ) in ran.stderr
    # Every old allocation still runs, in the very container it ran in before: never stopped.
    live = wait_for(lambda: three_live(manager.url), timeout=20, what="the bad one to stop")
    assert {a["id"]: containers(a) for a in live} == old
    assert {a["version"] for a in live} == {3}
    assert poller.fewest_answering() == 3  # the old ones answered throughout
    allocs = get_json(manager.url, "/allocations?job=web")
    assert all(a["desired"] == "run" for a in allocs if a["id"] in old)
    assert not any(a["canary"] for a in allocs)  # no canary phase, in the update nor the revert
    history = [(d["version"], d["status"], d["revert"]) for d in deployments(manager.url)]
    assert history[:2] == [(1, "successful", False), (2, "rolled-back", False)]
    assert history[2][0::2] == (3, True)
    wait_for(
        lambda: deployments(manager.url)[2]["status"] == "successful",
        timeout=20,
        what="the revert to succeed",
    )
    assert deployments(manager.url)[2]["groups"]["http"]["desired_canaries"] == 0

    shown = cube(manager, "job", "history", "web")
    assert shown.returncode == 0, shown.stderr
    assert "groups[0].tasks[0].env.VERSION: one -> bad" in shown.stdout
    assert "Rolled back" in shown.stdout
    assert_job_converges(manager, "web", [worker])


# --- canaries -------------------------------------------------------------------------------------
def test_a_canary_beside_three_promote_rolls_on_and_fail_leaves_the_old_ones(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, worker = one_worker_cluster(start_manager, start_worker)
    canary = {"canary": 1, "order": "start-first", "max_parallel": 3}
    run_ok(manager, web_job(tmp_path, "one", **canary))

    out = run_ok(manager, web_job(tmp_path, "two", **canary))
    assert "Waiting for promotion: the canary is healthy: cube job promote web" in out
    live = live_allocs(manager.url)
    assert sorted((a["version"], a["canary"]) for a in live) == [
        (1, False),
        (1, False),
        (1, False),
        (2, True),
    ]
    promoted = cube(manager, "job", "promote", "web")
    assert promoted.returncode == 0, promoted.stderr
    wait_for(
        lambda: deployments(manager.url)[-1]["status"] == "successful",
        timeout=30,
        what="the promoted deployment to succeed",
    )
    after = live_allocs(manager.url)
    assert sorted((a["version"], a["canary"]) for a in after) == [(2, False)] * 3
    kept = {a["id"]: containers(a) for a in after}
    (the_canary,) = [a for a in live if a["canary"]]
    assert the_canary["id"] in kept  # the canary became one of the three

    out = run_ok(manager, web_job(tmp_path, "three", **canary))
    assert "Waiting for promotion" in out
    (third,) = [a for a in live_allocs(manager.url) if a["canary"]]
    failed = cube(manager, "job", "fail", "web")
    assert failed.returncode == 0, failed.stderr
    assert "Rolled back: failed by hand (cube job fail); rolled back to version 2" in failed.stdout
    wait_for(
        lambda: not containers(third) and len(live_allocs(manager.url)) == 3,
        timeout=20,
        what="the canary to stop",
    )
    assert {a["id"]: containers(a) for a in live_allocs(manager.url)} == kept  # untouched

    # By hand, to a version by number: version 1's spec as version 5, no canary. The
    # command follows the revert's deployment as `cube job run` does, to its success.
    reverted = cube(manager, "job", "revert", "web", "1")
    assert reverted.returncode == 0, reverted.stderr
    assert "job web: version 5: back to version 1" in reverted.stderr
    assert "deployment of version 5: Successful" in reverted.stdout, reverted.stdout
    last = deployments(manager.url)[-1]
    assert last["status"] == "successful"
    assert (last["version"], last["revert"], last["groups"]["http"]["desired_canaries"]) == (
        5,
        True,
        0,
    )
    assert {a["version"] for a in live_allocs(manager.url)} == {5}
    assert_job_converges(manager, "web", [worker])


# --- the manager crashes --------------------------------------------------------------------------
def test_a_manager_killed_mid_deployment_resumes_it_losing_and_doubling_nothing(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, worker = one_worker_cluster(start_manager, start_worker, *PATIENT)
    # A deadline that leaves room for the restart: the manager learns the tasks' health
    # again from the worker's reports after it.
    slow = {"order": "start-first", "min_healthy_time": "2s", "healthy_deadline": "30s"}
    run_ok(manager, web_job(tmp_path, "one", **slow))
    detached = cube(manager, "job", "run", str(web_job(tmp_path, "two", **slow)), "--detach")
    assert detached.returncode == 0, detached.stderr
    wait_for(
        lambda: deployments(manager.url)[-1]["groups"]["http"]["healthy"] >= 1,
        timeout=30,
        what="one allocation of version 2 healthy",
    )
    before = deployments(manager.url)[-1]
    assert before["status"] == "running"

    manager.kill()  # SIGKILL, mid-deployment
    manager.start()

    wait_for(
        lambda: deployments(manager.url)[-1]["status"] == "successful",
        timeout=60,
        what="the deployment to resume and succeed",
    )
    assert [d["id"] for d in deployments(manager.url)][-1] == before["id"]  # resumed, not anew
    live = live_allocs(manager.url)
    assert sorted(a["index"] for a in live) == [0, 1, 2]
    assert {a["version"] for a in live} == {2}
    allocs = get_json(manager.url, "/allocations?job=web")
    assert len(allocs) == 6  # 3 old, 3 new: none lost, none made twice
    for a in live:
        assert len(containers(a)) == 1, a
    assert_job_converges(manager, "web", [worker])
