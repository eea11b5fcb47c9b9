"""The invariant every fault test ends with, checked against Docker itself.

* every task the user asked for is in its expected state (per the manager);
* exactly one container runs per Running task, on the node the manager names;
* no container is orphaned: every running Cube container of these workers belongs
  to a task the manager says is Running there;
* no allocation network is left over: each network of these workers belongs to an
  allocation of several tasks with a task that is not over there (pending, scheduled or
  running), and each running task of such an allocation has exactly one network of its
  allocation on its node; an allocation of one task has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cube.task.spec import AllocRef
from tests.support import api
from tests.support.engine import docker
from tests.support.waiting import wait_for


def running_containers(workers: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """task ID -> [(container ID, worker name)] of running containers of these workers."""
    out: dict[str, list[tuple[str, str]]] = {}
    for worker in workers:
        # One call per worker (not one per container): tests sample this twice a second.
        listing = docker(
            "ps",
            "--no-trunc",
            "--filter",
            f"label=cube.worker={worker}",
            "--format",
            '{{.ID}} {{.Label "cube.task-id"}}',
        )
        for line in listing.splitlines():
            cid, _, task_id = line.partition(" ")
            out.setdefault(task_id, []).append((cid, worker))
    return out


def alloc_networks(workers: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """(allocation ID, worker) -> names of that allocation's networks on that worker."""
    out: dict[tuple[str, str], list[str]] = {}
    for worker in workers:
        rows = docker(
            "network",
            "ls",
            "--filter",
            f"label=cube.worker={worker}",
            "--format",
            '{{.Name}} {{.Label "cube.alloc-id"}}',
        )
        for row in rows.splitlines():
            name, _, alloc_id = row.partition(" ")
            if alloc_id:
                out.setdefault((alloc_id, worker), []).append(name)
    return out


def network_violations(tasks: Iterable[dict[str, Any]], workers: Iterable[str]) -> list[str]:
    """What is wrong with the allocation networks of ``workers``, given every task."""
    networks = alloc_networks(workers)
    tasks = [t for t in tasks if t.get("alloc")]
    wanted = {
        (t["alloc"]["id"], t["node"])
        for t in tasks
        if t["state"] in ("pending", "scheduled", "running") and shared(t["alloc"])
    }
    problems = [
        f"leftover network(s) {names} of allocation {alloc_id} on {worker}"
        for (alloc_id, worker), names in networks.items()
        if (alloc_id, worker) not in wanted
    ]
    for task in tasks:
        names = networks.get((task["alloc"]["id"], task["node"]), [])
        if task["state"] == "running" and shared(task["alloc"]) and len(names) != 1:
            problems.append(f"task {task['id']} runs with allocation networks {names}")
    return problems


def shared(alloc: dict[str, Any]) -> bool:
    """Whether the allocation's tasks share a network (see ``AllocRef.shared``)."""
    return bool(AllocRef.model_validate(alloc).shared)


def invariant_violations(
    manager_url: str, workers: Iterable[str], expected: Mapping[str, str]
) -> list[str]:
    """What is wrong right now (empty when the invariant holds).

    ``expected`` maps task ID -> expected state ("running", "completed", ...).
    """
    workers = list(workers)
    tasks: dict[str, dict[str, Any]] = {
        t["id"]: t for t in api.get(f"{manager_url}/v1/tasks", timeout=10).json()
    }
    containers = running_containers(workers)
    problems: list[str] = []
    for task_id, state in expected.items():
        task = tasks.get(task_id)
        if task is None:
            problems.append(f"task {task_id} is unknown to the manager")
            continue
        if task["state"] != state:
            problems.append(f"task {task_id} is {task['state']}, expected {state}")
        copies = containers.get(task_id, [])
        if task["state"] == "running":
            if len(copies) != 1:
                problems.append(f"task {task_id} has {len(copies)} running containers: {copies}")
            elif copies[0][1] != task["node"]:
                problems.append(
                    f"task {task_id} runs on {copies[0][1]}, manager says {task['node']}"
                )
    for task_id, copies in containers.items():
        task = tasks.get(task_id)
        if task is None or task["state"] != "running":
            problems.append(f"orphaned container(s) {copies} for task {task_id}")
    return problems + network_violations(tasks.values(), workers)


def assert_converges(
    manager_url: str, workers: Iterable[str], expected: Mapping[str, str], *, timeout: float = 30
) -> None:
    """Wait until the invariant holds; fail with the last violations if it never does."""
    workers = list(workers)
    last: list[str] = []

    def holds() -> bool:
        nonlocal last
        last = invariant_violations(manager_url, workers, expected)
        return not last

    try:
        wait_for(holds, timeout=timeout, interval=0.25, what="the cluster to converge")
    except AssertionError:
        raise AssertionError("invariant violated:\n  " + "\n  ".join(last)) from None


def job_expectations(manager_url: str, job: str) -> dict[str, str]:
    """task ID -> "running" for every task of the job's allocations that should run.

    Also checks the allocations themselves: one holder per slot, each Running, each on the
    node its tasks run on. (The allocation's private network is the worker's: its check
    comes with the worker's allocation runner.)
    """
    detail = api.get(f"{manager_url}/v1/jobs/{job}", timeout=10).json()
    tasks = {t["id"]: t for t in api.get(f"{manager_url}/v1/tasks", timeout=10).json()}
    holders = [
        a for a in detail["allocations"] if a["desired"] == "run" and a["replaced_by"] is None
    ]
    slots = [(a["group"], a["index"]) for a in holders]
    assert len(slots) == len(set(slots)), f"two allocations hold one slot: {slots}"
    expected: dict[str, str] = {}
    for alloc in holders:
        assert alloc["status"] == "running", alloc
        for record in alloc["tasks"].values():
            assert tasks[record["id"]]["node"] == alloc["node"], (alloc, tasks[record["id"]])
            expected[record["id"]] = "running"
    return expected
