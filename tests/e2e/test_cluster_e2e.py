"""The whole cluster end to end: a manager and workers as real processes, real HTTP, real Docker.

Every test starts its own manager (``start_manager``) and workers that join it with
``--manager``; what the manager says is cross-checked with what Docker itself shows,
by the labels every Cube container carries (``cube.worker``, ``cube.task-id``).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from cube.task.state import State, can_transition
from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.cli import cube, ok
from tests.support.cluster import stop, submit, task_of, tasks_of, wait_nodes, wait_state
from tests.support.engine import IMAGE, containers_of, docker, sleeper
from tests.support.invariants import assert_converges
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker


# --- helpers --------------------------------------------------------------------------------------


def events_of(manager: AgentProcess, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"{manager.url}/v1/tasks/{task_id}/events", timeout=10)
    assert response.status_code == 200, response.text
    return list(response.json())


def cluster(
    start_manager: Any, start_worker: Any, *worker_args: str, workers: int = 2
) -> tuple[AgentProcess, list[AgentProcess]]:
    """A manager and ``workers`` workers that joined it (each with ``worker_args``)."""
    manager = start_manager()
    with ThreadPoolExecutor(workers) as pool:  # each takes a second or two to come up
        started = list(
            pool.map(lambda _: start_worker(*worker_args, "--manager", manager.url), range(workers))
        )
    wait_nodes(manager, started)
    return manager, started


def containers_of_task(task_id: str, *, running_only: bool = False) -> list[str]:
    return containers_of(f"cube.task-id={task_id}", running_only=running_only)


def label_of(container: str, label: str) -> str:
    return docker("inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', container)


def assert_legal_path(events: list[dict[str, Any]]) -> None:
    """Each event starts where the previous one ended, along the transition table."""
    assert events, "no events"
    assert events[0]["state"] == "pending"
    assert events[0]["previous"] is None
    for before, after in itertools.pairwise(events):
        assert after["previous"] == before["state"], events
        assert can_transition(State(before["state"]), State(after["state"])), (before, after)


# --- placement ------------------------------------------------------------------------------------
def test_round_robin_places_six_tasks_three_on_each_of_two_workers(
    start_manager: Any, start_worker: Any
) -> None:
    manager, workers = cluster(start_manager, start_worker)

    ids = [submit(manager, sleeper(f"rr{i}")) for i in range(6)]
    tasks = [wait_state(manager, task_id, "running") for task_id in ids]

    assert Counter(t["node"] for t in tasks) == {w.name: 3 for w in workers}
    for worker in workers:
        running = containers_of(f"cube.worker={worker.name}", running_only=True)
        assert len(running) == 3, worker.name
        assert set(running) == {t["container_id"] for t in tasks if t["node"] == worker.name}


def test_task_too_big_for_every_node_stays_pending_until_a_big_worker_joins(
    start_manager: Any, start_worker: Any
) -> None:
    manager, _ = cluster(start_manager, start_worker, "--cpu", "1")
    # 2 cores: more than either small worker offers, and no more than this machine has
    # (Docker refuses a CPU limit above the host's core count).
    task_id = submit(manager, sleeper("big", resources={"cpu": 2}))

    def explained() -> dict[str, Any] | None:
        task = task_of(manager, task_id)
        return task if task["reason"] else None

    task = wait_for(explained, what="a reason why the task is pending")
    assert task["state"] == "pending"
    assert "CPU" in task["reason"]
    assert "2.0" in task["reason"]
    time.sleep(1.0)  # five collection passes: it must still not be placed anywhere
    assert task_of(manager, task_id)["state"] == "pending"
    assert containers_of_task(task_id) == []

    big = start_worker("--cpu", "4", "--manager", manager.url)
    task = wait_state(manager, task_id, "running")

    assert task["node"] == big.name
    assert containers_of_task(task_id, running_only=True) == [task["container_id"]]
    assert label_of(task["container_id"], "cube.worker") == big.name


# --- stopping, in every state ---------------------------------------------------------------------
def test_stop_a_pending_task_completes_it_at_once(start_manager: Any, start_worker: Any) -> None:
    manager, _ = cluster(start_manager, start_worker, "--cpu", "1", workers=1)
    task_id = submit(manager, sleeper("huge", resources={"cpu": 100}))
    wait_for(lambda: "CPU" in task_of(manager, task_id)["reason"], what="the pending reason")

    response = stop(manager, task_id)

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "completed"
    assert response.json()["desired"] == "stop"
    assert response.json()["node"] is None
    time.sleep(0.5)  # the dispatcher must not place a stopped task
    assert task_of(manager, task_id)["state"] == "completed"
    assert containers_of_task(task_id) == []


def test_stop_a_running_task_completes_it_and_removes_its_container(
    start_manager: Any, start_worker: Any
) -> None:
    manager, _ = cluster(start_manager, start_worker, workers=1)
    task_id = submit(manager, sleeper("victim"))
    container = wait_state(manager, task_id, "running")["container_id"]
    assert containers_of_task(task_id, running_only=True) == [container]

    response = stop(manager, task_id)

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "completed"
    assert containers_of_task(task_id) == []
    time.sleep(0.5)  # later collection passes keep it that way
    assert task_of(manager, task_id)["state"] == "completed"
    assert containers_of_task(task_id) == []


def test_stop_a_failed_task_removes_its_leftover_container(
    start_manager: Any, start_worker: Any
) -> None:
    manager, _ = cluster(start_manager, start_worker, workers=1)
    task_id = submit(manager, {"name": "crash", "image": IMAGE, "command": ["sh", "-c", "exit 3"]})
    task = wait_state(manager, task_id, "failed")
    assert task["exit_code"] == 3
    assert containers_of_task(task_id) == [task["container_id"]]  # exited, kept for its logs

    response = stop(manager, task_id)

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "failed"  # stopping does not rewrite how it ended
    assert response.json()["exit_code"] == 3
    assert containers_of_task(task_id) == []


def test_stop_right_after_submitting_ends_completed_and_leaves_no_container(
    start_manager: Any, start_worker: Any
) -> None:
    manager, workers = cluster(start_manager, start_worker)

    stopped: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=manager.url, timeout=60, headers=api.HEADERS) as http:
        for i in range(5):
            # Back to back: the stop lands while the task is Pending, being placed, or on
            # its way to its node (Scheduled is too short to catch on purpose).
            response = http.post("/v1/tasks", json=sleeper(f"early{i}", stop_timeout="0s"))
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            response = http.delete(f"/v1/tasks/{task_id}")
            assert response.status_code == 200, response.text
            stopped[task_id] = response.json()

    assert {t["state"] for t in stopped.values()} == {"completed"}
    ids = list(stopped)

    def all_gone() -> bool:
        return all(containers_of_task(t) == [] for t in ids)

    wait_for(all_gone, timeout=10, interval=0.5, what="every container of a stopped task to go")
    time.sleep(1.0)  # and none comes back on later collection passes
    assert all_gone()
    for worker in workers:
        assert containers_of(f"cube.worker={worker.name}") == []
    for task_id in ids:
        assert task_of(manager, task_id)["state"] == "completed"
        events = events_of(manager, task_id)
        assert_legal_path(events)
        # Once stopped, a task never starts again: no node got it after the stop.
        assert [e["state"] for e in events].count("completed") == 1, events
        assert events[-1]["state"] == "completed", events


@pytest.fixture
def blackhole_registry() -> Iterator[str]:
    """A registry address that accepts connections and never answers: pulls from it hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    done = threading.Event()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        for conn in [*accepted, server]:
            conn.close()


def test_stop_a_scheduled_task_whose_image_is_still_pulling(
    start_manager: Any, start_worker: Any, blackhole_registry: str
) -> None:
    """A pull that hangs keeps the task Scheduled on its node for as long as we like.

    Stopping it must not wait for the pull: the task ends Completed at once.
    """
    manager, _ = cluster(start_manager, start_worker, workers=1)
    spec = sleeper("pulling", image=f"{blackhole_registry}/cube/never:1")
    task_id = submit(manager, spec)
    wait_state(manager, task_id, "scheduled")
    time.sleep(0.5)  # the node is pulling: still Scheduled, several collection passes later
    assert task_of(manager, task_id)["state"] == "scheduled"

    started = time.monotonic()
    response = stop(manager, task_id)
    took = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert response.json()["state"] == "completed", response.json()
    assert took < 5, f"stopping a Scheduled task took {took:.1f}s"
    assert containers_of_task(task_id) == []


# --- the manager's own state ----------------------------------------------------------------------
def test_manager_killed_and_restarted_keeps_every_task_and_starts_no_duplicate(
    start_manager: Any, start_worker: Any
) -> None:
    manager, workers = cluster(start_manager, start_worker)
    ids = [submit(manager, sleeper(f"keep{i}")) for i in range(3)]
    crashed = submit(manager, {"name": "crash", "image": IMAGE, "command": ["sh", "-c", "exit 3"]})
    for task_id in ids:
        wait_state(manager, task_id, "running")
    wait_state(manager, crashed, "failed")

    def summary() -> dict[str, tuple[str, str, str]]:
        return {
            tid: (t["state"], t["node"], t["container_id"]) for tid, t in tasks_of(manager).items()
        }

    before = summary()
    assert len(before) == 4

    manager.kill()
    manager.start()

    assert summary() == before
    assert set(wait_nodes(manager, workers)) == {w.name for w in workers}
    time.sleep(1.0)  # five collection passes: time enough to (wrongly) send a task again
    assert summary() == before
    for task_id, (_, node, container) in before.items():
        assert containers_of_task(task_id) == [container], task_id
        assert label_of(container, "cube.worker") == node

    late = submit(manager, sleeper("late"))
    task = wait_state(manager, late, "running")
    assert task["node"] in {w.name for w in workers}
    assert containers_of_task(late, running_only=True) == [task["container_id"]]


# --- history, logs --------------------------------------------------------------------------------
def test_events_of_a_running_task_are_pending_scheduled_running_with_its_node(
    start_manager: Any, start_worker: Any
) -> None:
    manager, _ = cluster(start_manager, start_worker, workers=1)
    task_id = submit(manager, sleeper("story"))
    task = wait_state(manager, task_id, "running")

    events = events_of(manager, task_id)

    assert_legal_path(events)
    assert [e["state"] for e in events] == ["pending", "scheduled", "running"]
    assert [e["node"] for e in events[1:]] == [task["node"], task["node"]]
    assert task["node"] in events[1]["reason"]  # "placed on <node>"


def test_events_of_a_restarted_task_show_both_failures(
    start_manager: Any, start_worker: Any
) -> None:
    manager, _ = cluster(start_manager, start_worker, workers=1)
    task_id = submit(
        manager,
        {
            "name": "flaky",
            "image": IMAGE,
            "command": ["sh", "-c", "exit 2"],
            "restart": {"policy": "on-failure", "max_attempts": 1, "delay": "100ms"},
        },
    )

    def gave_up() -> dict[str, Any] | None:
        task = task_of(manager, task_id)
        return task if task["state"] == "failed" and "gave up" in task["reason"] else None

    task = wait_for(gave_up, what="the restart policy to give up")
    assert task["restarts"] == 1
    assert task["exit_code"] == 2

    events = events_of(manager, task_id)
    assert_legal_path(events)
    assert [e["state"] for e in events] == [
        "pending",
        "scheduled",
        "running",
        "failed",
        "scheduled",
        "running",
        "failed",
    ]
    assert [e["exit_code"] for e in events if e["state"] == "failed"] == [2, 2]
    assert {e["node"] for e in events[1:]} == {task["node"]}


def test_logs_are_proxied_from_the_node(start_manager: Any, start_worker: Any) -> None:
    manager, _ = cluster(start_manager, start_worker, workers=1)
    task_id = submit(
        manager,
        {
            "name": "talker",
            "image": IMAGE,
            "command": ["sh", "-c", "echo hello-e2e; sleep 600"],
            "stop_timeout": "1s",
        },
    )
    wait_state(manager, task_id, "running")

    def output() -> str | None:
        response = api.get(f"{manager.url}/v1/tasks/{task_id}/logs", timeout=10)
        assert response.status_code == 200, response.text
        return response.text if "hello-e2e" in response.text else None

    assert wait_for(output, timeout=10, what="the task's output").strip() == "hello-e2e"


# --- bad input ------------------------------------------------------------------------------------
def test_bad_input_gets_422_naming_the_field_and_unknown_ids_404(
    start_manager: Any, start_worker: Any
) -> None:
    manager, [worker] = cluster(start_manager, start_worker, workers=1)
    with httpx.Client(base_url=manager.url, timeout=10, headers=api.HEADERS) as http:
        bad_memory = {"name": "x", "image": IMAGE, "resources": {"memory": "lots"}}
        response = http.post("/v1/tasks", json=bad_memory)
        assert response.status_code == 422, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["resources.memory"]
        assert "resources.memory" in response.json()["message"]

        response = http.post("/v1/tasks", json={"name": "Not_A_Name", "image": IMAGE})
        assert response.status_code == 422, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["name"]

        response = http.post("/v1/tasks", content=b"{not json")
        assert response.status_code == 422, response.text
        assert response.json()["fields"][0]["field"] == "body"
        assert http.get("/v1/tasks").json() == []  # nothing was accepted

        for method, path in [
            ("GET", "/v1/tasks/nope"),
            ("DELETE", "/v1/tasks/nope"),
            ("GET", "/v1/tasks/nope/events"),
            ("GET", "/v1/tasks/nope/logs"),
            ("GET", "/v1/nodes/nope"),
        ]:
            response = http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "not_found"

        for address in ["not a url", "ftp://127.0.0.1:1", "http://127.0.0.1:1 /x"]:
            response = http.post("/v1/nodes", json={"name": "w-bad", "address": address})
            assert response.status_code == 422, (address, response.text)
            assert [f["field"] for f in response.json()["fields"]] == ["address"]
        # A real worker, under another name: the manager asks it and refuses the lie.
        lie = {"name": "w-bad", "address": worker.url, "token": api.TOKEN}
        response = http.post("/v1/nodes", json=lie)
        assert response.status_code == 422, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["name"]
        # A well-formed address where nothing answers cannot join either: the caller's input.
        response = http.post("/v1/nodes", json={"name": "w-bad", "address": "http://127.0.0.1:1"})
        assert response.status_code == 422, response.text
        assert [f["field"] for f in response.json()["fields"]] == ["address"]
        assert "no worker answers" in response.json()["message"]
        assert [n["name"] for n in http.get("/v1/nodes").json()] == [worker.name]


# --- the CLI against the real cluster -------------------------------------------------------------


def test_cli_run_status_and_nodes_agree_with_docker(start_manager: Any, start_worker: Any) -> None:
    manager, workers = cluster(start_manager, start_worker)

    def run(i: int) -> str:
        args = ["--name", f"cli{i}", "--image", IMAGE, "--cpu", "0.5", "--wait"]
        return ok(cube("run", "--manager", manager.url, *args, "--", "sleep", "600")).strip()

    with ThreadPoolExecutor(2) as pool:  # each CLI call is a new Python process: overlap them
        printed = list(pool.map(run, range(2)))

    known = tasks_of(manager)
    for task_id in printed:
        assert task_id in known, f"`cube run` printed {task_id!r}, not a task ID"
        assert known[task_id]["state"] == "running"

    status = {t["id"]: t for t in json.loads(ok(cube("status", "-o", "json", addr=manager.url)))}
    for task_id in printed:
        assert status[task_id]["state"] == "running"
        [container] = containers_of_task(task_id, running_only=True)
        assert status[task_id]["container_id"] == container
        assert status[task_id]["node"] == label_of(container, "cube.worker")

    nodes = {n["name"]: n for n in json.loads(ok(cube("nodes", "-o", "json", addr=manager.url)))}
    assert set(nodes) == {w.name for w in workers}
    for worker in workers:
        running = containers_of(f"cube.worker={worker.name}", running_only=True)
        cpus = [int(docker("inspect", "-f", "{{.HostConfig.NanoCpus}}", c)) / 1e9 for c in running]
        assert nodes[worker.name]["state"] == "ready"
        assert nodes[worker.name]["allocated"]["cpu"] == pytest.approx(sum(cpus))
    # Where each task went is round-robin's business (tested with six tasks above; two CLI
    # runs racing a node's first report may both land on one node): the total must hold.
    assert sum(n["allocated"]["cpu"] for n in nodes.values()) == pytest.approx(1.0)


def test_cli_logs_and_stop(start_manager: Any, start_worker: Any) -> None:
    manager, _ = cluster(start_manager, start_worker, workers=1)
    task_id = ok(
        cube(
            "run",
            "--name",
            "cli-talker",
            "--image",
            IMAGE,
            "--wait",
            "--",
            "sh",
            "-c",
            # Exits on SIGTERM at once, so `cube stop` need not wait for the SIGKILL.
            "trap 'exit 0' TERM; echo hello-cli; sleep 600 & wait",
            addr=manager.url,
        )
    ).strip()
    assert containers_of_task(task_id, running_only=True)

    def logged() -> str | None:
        out = ok(cube("logs", task_id, addr=manager.url))
        return out if "hello-cli" in out else None

    assert (
        wait_for(logged, timeout=10, what="`cube logs` to show the output").strip() == "hello-cli"
    )

    ok(cube("stop", task_id, addr=manager.url))

    assert containers_of_task(task_id) == []
    assert task_of(manager, task_id)["state"] == "completed"


def test_cli_run_wait_of_a_task_that_exits_0_succeeds(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    """A batch task's success is exit 0. Its health check never passes, so the task is
    never Running: the CLI cannot take a glimpse of Running for the success."""
    manager, workers = cluster(start_manager, start_worker, workers=1)
    spec = tmp_path / "batch.yaml"
    spec.write_text(
        f"name: batch\nimage: {IMAGE}\ncommand: [sh, -c, 'sleep 1']\n"
        "health: {tcp: {port: 9}, interval: 10s}\n"
    )
    result = cube("run", str(spec), "--wait", addr=manager.url)
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    assert task_of(manager, task_id)["state"] == "completed"
    assert "completed on" in result.stderr
    assert not any(e["state"] == "running" for e in events_of(manager, task_id))
    assert_converges(manager.url, [w.name for w in workers], {task_id: "completed"})


def test_cli_prints_escape_sequences_from_the_cluster_inert(
    start_manager: Any, start_worker: Any
) -> None:
    """A spec's command and labels, and a worker's node labels, come back as escapes;
    logs stay raw unless --escape."""
    hostile, shown = "\x1b[2J\x1b]0;pwned\x07", r"\x1b[2J\x1b]0;pwned\x07"
    manager = start_manager()
    worker = start_worker("--manager", manager.url, "--label", f"zone={hostile}")
    wait_nodes(manager, [worker])
    script = f"printf '{hostile}red\\n'; sleep 600"
    spec = sleeper("hostile", command=["sh", "-c", script], labels={"note": hostile})
    task_id = submit(manager, spec)
    wait_state(manager, task_id, "running")

    status = ok(cube("status", task_id, addr=manager.url))
    nodes = ok(cube("nodes", "show", worker.name, addr=manager.url))
    for printed in (status, nodes, ok(cube("status", addr=manager.url))):
        assert "\x1b" not in printed, printed
        assert "\x07" not in printed, printed
    assert f"note={shown}" in status
    assert shown in status.split("Command:")[1].splitlines()[0]
    assert f"zone={shown}" in nodes

    def logged() -> str | None:
        out = ok(cube("logs", task_id, addr=manager.url))
        return out if "red" in out else None

    assert wait_for(logged, timeout=10, what="the output") == f"{hostile}red\n"
    assert ok(cube("logs", "--escape", task_id, addr=manager.url)) == f"{shown}red\n"
    assert_converges(manager.url, [worker.name], {task_id: "running"})


def test_cli_finds_a_task_by_name_or_any_unique_prefix(
    start_manager: Any, start_worker: Any
) -> None:
    manager, workers = cluster(start_manager, start_worker, workers=1)
    talker = sleeper("talker", command=["sh", "-c", "echo said-it; sleep 600"], id="fab1")
    submit(manager, talker)
    submit(manager, sleeper("twin", id="cab1"))
    submit(manager, sleeper("twin", id="cab2"))
    wait_state(manager, "fab1", "running")

    assert json.loads(ok(cube("status", "f", "-o", "json", addr=manager.url)))["id"] == "fab1"
    assert json.loads(ok(cube("status", "talker", "-o", "json", addr=manager.url)))["id"] == "fab1"

    def said() -> bool:
        return "said-it" in ok(cube("logs", "talker", addr=manager.url))

    wait_for(said, timeout=10, what="`cube logs talker` to show the output")
    twin = cube("status", "twin", addr=manager.url)
    assert twin.returncode == 1
    assert "2 tasks are named 'twin': cab1 (" in twin.stderr
    assert "cab2 (" in twin.stderr
    assert cube("status", "ca", addr=manager.url).returncode == 1
    ok(cube("stop", "talker", addr=manager.url))
    assert task_of(manager, "fab1")["state"] == "completed"
    expected = {"fab1": "completed", "cab1": "running", "cab2": "running"}
    assert_converges(manager.url, [w.name for w in workers], expected)


def test_cli_status_json_of_one_task_has_the_events_the_table_shows(
    start_manager: Any, start_worker: Any
) -> None:
    manager, workers = cluster(start_manager, start_worker, workers=1)
    task_id = submit(manager, sleeper("evented"))
    wait_state(manager, task_id, "running")
    shown = json.loads(ok(cube("status", task_id, "-o", "json", addr=manager.url)))
    assert shown["events"] == events_of(manager, task_id)
    assert [e["state"] for e in shown["events"]] == ["pending", "scheduled", "running"]
    table = ok(cube("status", task_id, addr=manager.url))
    assert "Pending -> Scheduled" in table
    assert_converges(manager.url, [w.name for w in workers], {task_id: "running"})
