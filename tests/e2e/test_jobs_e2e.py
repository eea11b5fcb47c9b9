"""Jobs end to end: real manager and worker processes, real Docker, the real CLI.

Each test runs ``cube job ...`` as a user would, checks the allocations the manager
reports against the containers Docker runs, and ends with the invariant check
(:func:`tests.support.invariants.assert_converges`) over the job's tasks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import api
from tests.support.engine import IMAGE, containers_of
from tests.support.invariants import alloc_networks, assert_converges
from tests.support.jobs import (
    assert_job_converges,
    cube,
    holders,
    job_file,
    running_holders,
    task_ids,
    wait_allocs,
)
from tests.support.manager_http import (
    NODE_TIMEOUT,
    PATIENT,
    get_json,
    gone,
    report,
    start_workers,
    two_node_cluster,
    wait_node,
)
from tests.support.paths import EXAMPLES
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker


# --- a service job, and a lost worker -------------------------------------------------------------
def test_service_job_spreads_runs_in_docker_and_survives_a_lost_worker(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, a, b = two_node_cluster(start_manager, start_worker)
    ran = cube(manager, "job", "run", str(job_file(tmp_path, "svc")))
    assert ran.returncode == 0, ran.stderr
    assert "web: 3 placed, 3 running of 3" in ran.stdout

    allocs = wait_allocs(manager.url, "svc", 3)
    assert {x["node"] for x in allocs} == {a.name, b.name}  # spread over both
    for alloc in allocs:
        assert alloc["placement"]["node"] == alloc["node"]
        for record in alloc["tasks"].values():
            copies = containers_of(f"cube.task-id={record['id']}", running_only=True)
            assert len(copies) == 1, record
    status = cube(manager, "job", "status", "svc")
    assert status.returncode == 0, status.stderr
    assert "svc.web[2]" in status.stdout
    assert "Running" in status.stdout
    as_json = json.loads(cube(manager, "job", "status", "svc", "-o", "json").stdout)
    assert len(as_json["allocations"]) == 3

    on_a = [x for x in allocs if x["node"] == a.name]
    stale = [c for t in task_ids(on_a) for c in containers_of(f"cube.task-id={t}")]
    a.kill()
    killed = time.monotonic()
    wait_node(manager.url, a.name, "down", timeout=NODE_TIMEOUT + 5)
    moved = wait_allocs(manager.url, "svc", 3, timeout=NODE_TIMEOUT + 5)
    report("worker killed -> its allocations running elsewhere", time.monotonic() - killed)
    assert {x["node"] for x in moved} == {b.name}
    for old in on_a:
        record = get_json(manager.url, f"/allocations/{old['id']}")
        assert record["status"] == "lost"
        assert record["replaced_by"] in {x["id"] for x in moved}

    a.start()  # it adopts its old containers; the manager stops them: never two copies
    wait_node(manager.url, a.name, "ready")
    wait_for(lambda: gone(stale), timeout=30, what="the lost allocations' containers to go")
    assert_job_converges(manager, "svc", [a, b])


# --- scale, a new version, stop and purge ---------------------------------------------------------
def test_scale_update_stop_and_purge(start_manager: Any, start_worker: Any, tmp_path: Path) -> None:
    manager, a, b = two_node_cluster(start_manager, start_worker)
    path = job_file(tmp_path, "life", count=2)
    assert cube(manager, "job", "run", str(path)).returncode == 0

    scaled = cube(manager, "job", "scale", "life", "web", "3")
    assert scaled.returncode == 0, scaled.stderr
    assert "3 running of 3" in scaled.stdout  # it followed the job until it was there
    first = wait_allocs(manager.url, "life", 3)
    down = cube(manager, "job", "scale", "life", "web", "1")
    assert down.returncode == 0, down.stderr
    assert "1 running of 1" in down.stdout
    (kept,) = wait_allocs(manager.url, "life", 1)
    assert kept["index"] == 0
    assert kept["id"] in {x["id"] for x in first}  # scaling touched nothing else
    gone_ids = [t for x in first if x["id"] != kept["id"] for t in task_ids([x])]
    wait_for(
        lambda: all(not containers_of(f"cube.task-id={t}", running_only=True) for t in gone_ids),
        what="the scaled-down allocations' containers to stop",
    )
    wait_for(  # their end says why (not "stopped by user"), on the node and in the manager
        lambda: all(
            get_json(manager.url, f"/tasks/{t}/events")[-1]["reason"] == "web was scaled to 1"
            for t in gone_ids
        ),
        what="the scaled-down tasks' last event to name the scale",
    )

    changed = job_file(tmp_path, "life", count=2, env="two")
    ran = cube(manager, "job", "run", str(changed))
    assert ran.returncode == 0, ran.stderr
    moved = wait_allocs(manager.url, "life", 2)
    versions = get_json(manager.url, "/jobs/life/versions")
    assert [v["number"] for v in versions] == [1, 2, 3, 4]  # run, scale, scale, new spec
    assert {x["version"] for x in moved} == {4}
    assert kept["id"] not in {x["id"] for x in moved}  # a new spec: new containers
    history = cube(manager, "job", "history", "life")
    assert history.returncode == 0
    assert "web=2" in history.stdout
    again = cube(manager, "job", "run", str(changed))
    assert again.returncode == 0
    assert "(unchanged)" in again.stderr
    assert_job_converges(manager, "life", [a, b])

    stopped = cube(manager, "job", "stop", "life")
    assert stopped.returncode == 0, stopped.stderr
    wait_for(
        lambda: all(
            not containers_of(f"cube.task-id={t}", running_only=True) for t in task_ids(moved)
        ),
        what="the stopped job's containers to stop",
    )
    assert get_json(manager.url, "/jobs/life")["job"]["status"] == "dead"
    purged = cube(manager, "job", "stop", "life", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert api.get(f"{manager.url}/v1/jobs/life", timeout=10).status_code == 404
    forgotten = api.get(f"{manager.url}/v1/allocations", params={"job": "life"}, timeout=10)
    assert forgotten.status_code == 404  # no job, so no allocations of it either
    assert not [a for a in get_json(manager.url, "/allocations") if a["job"] == "life"]
    every_task = {t for alloc in first for t in task_ids([alloc])} | set(task_ids(moved))
    wait_for(  # stopped, then purged: gone from `cube status` too, as Nomad's GC does
        lambda: not every_task & {t["id"] for t in get_json(manager.url, "/tasks")},
        what="the purged job's tasks to be forgotten",
    )
    assert_converges(manager.url, [a.name, b.name], {})


# --- the manager crashes --------------------------------------------------------------------------
def test_manager_killed_and_restarted_resumes_the_job_and_doubles_nothing(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    # PATIENT: a restart on a busy machine must not pass for a silence that stops every task.
    manager, a, b = two_node_cluster(start_manager, start_worker, *PATIENT)
    detached = cube(manager, "job", "run", str(job_file(tmp_path, "resume", count=4)), "--detach")
    assert detached.returncode == 0, detached.stderr
    manager.kill()  # in the middle of placing and starting
    manager.start()
    allocs = wait_allocs(manager.url, "resume", 4)
    assert len(get_json(manager.url, "/allocations?job=resume")) == 4  # none made twice
    for t in task_ids(allocs):
        assert len(containers_of(f"cube.task-id={t}")) == 1, t
    assert_job_converges(manager, "resume", [a, b])


# --- batch and system jobs ------------------------------------------------------------------------
def test_batch_job_with_parallelism_completes(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, a, b = two_node_cluster(start_manager, start_worker)
    spec = {
        "job": "crunch",
        "type": "batch",
        "groups": [
            {
                "name": "work",
                "count": 5,
                "parallelism": 2,
                "tasks": [{"name": "step", "image": IMAGE, "command": ["sleep", "1"]}],
            }
        ],
    }
    path = tmp_path / "crunch.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML too
    ran = cube(manager, "job", "run", str(path))
    assert ran.returncode == 0, ran.stderr
    detail = get_json(manager.url, "/jobs/crunch")
    assert detail["job"]["status"] == "complete"
    allocs = [x for x in detail["allocations"] if x["replaced_by"] is None]
    assert sorted(x["index"] for x in allocs) == [0, 1, 2, 3, 4]
    assert {x["status"] for x in allocs} == {"complete"}
    # Never more than two at once: each started after all but one of those before it ended.
    spans = sorted((x["created_at"], x["finished_at"]) for x in allocs)
    for i, (start, _) in enumerate(spans):
        overlapping = [s for s in spans[:i] if s[1] > start]
        assert len(overlapping) <= 1, spans
    assert_converges(manager.url, [a.name, b.name], {})


def test_batch_job_that_always_fails_ends_failed_with_its_exit_code_and_log_tail(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, a, b = two_node_cluster(start_manager, start_worker)
    spec = {
        "job": "doomed",
        "type": "batch",
        "groups": [
            {
                "name": "work",
                "reschedule": {"attempts": 1, "delay": "1s"},
                "tasks": [
                    {"name": "step", "image": IMAGE, "command": ["sh", "-c", "echo boom; exit 3"]}
                ],
            }
        ],
    }
    path = tmp_path / "doomed.json"
    path.write_text(json.dumps(spec))
    ran = cube(manager, "job", "run", str(path))
    assert ran.returncode == 1, ran
    assert "job doomed failed: doomed.work[0] failed for good" in ran.stderr
    allocs = get_json(manager.url, "/allocations?job=doomed")
    assert [x["status"] for x in allocs] == ["failed", "failed"]  # the first, and its one retry
    assert allocs[1]["replaces"] == allocs[0]["id"]
    status = cube(manager, "job", "status", "doomed")
    assert status.returncode == 0, status.stderr
    assert "Failed" in status.stdout
    assert "exit code 3" in status.stdout
    assert "boom" in status.stdout  # the failed task's last log line
    assert_converges(manager.url, [a.name, b.name], {})


def test_system_job_follows_the_nodes_that_join_drain_and_come_back(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager = start_manager("--node-timeout", str(NODE_TIMEOUT))
    workers = start_workers(start_worker, manager.url, 3)
    for worker in workers:
        wait_node(manager.url, worker.name, "ready")
    path = job_file(tmp_path, "agent", count=None, type="system")
    ran = cube(manager, "job", "run", str(path))
    assert ran.returncode == 0, ran.stderr
    allocs = wait_allocs(manager.url, "agent", 3)
    assert sorted(x["node"] for x in allocs) == sorted(w.name for w in workers)

    fourth = start_worker("--manager", manager.url)  # a node that joins gets one
    workers.append(fourth)
    allocs = wait_allocs(manager.url, "agent", 4)
    assert sorted(x["node"] for x in allocs) == sorted(w.name for w in workers)
    assert_job_converges(manager, "agent", workers)

    drained = workers[0]
    (on_drained,) = [x for x in allocs if x["node"] == drained.name]
    assert cube(manager, "nodes", "drain", drained.name).returncode == 0
    rest = wait_allocs(manager.url, "agent", 3)
    assert drained.name not in {x["node"] for x in rest}
    assert {x["id"] for x in rest} < {x["id"] for x in allocs}  # nothing new elsewhere
    wait_for(
        lambda: all(
            not containers_of(f"cube.task-id={t}", running_only=True)
            for t in task_ids([on_drained])
        ),
        what="the drained node's allocation to stop",
    )
    stopped = get_json(manager.url, f"/allocations/{on_drained['id']}")
    assert (stopped["desired"], stopped["replaced_by"]) == ("stop", None)
    assert_job_converges(manager, "agent", workers)

    assert cube(manager, "nodes", "undrain", drained.name).returncode == 0
    back = wait_allocs(manager.url, "agent", 4)
    assert sorted(x["node"] for x in back) == sorted(w.name for w in workers)
    assert_job_converges(manager, "agent", workers)


# --- bad input ------------------------------------------------------------------------------------
def test_bad_job_file_exits_2_naming_the_file_and_field_and_creates_nothing(
    start_manager: Any, tmp_path: Path
) -> None:
    manager = start_manager()
    path = tmp_path / "bad.yaml"
    path.write_text(
        "job: bad\ngroups:\n  - name: g\n    tasks:\n"
        "      - {name: a, image: busybox}\n      - {name: b, image: ''}\n"
    )
    for command in ("run", "plan"):
        result = cube(manager, "job", command, str(path))
        assert result.returncode == 2, result
        assert result.stderr.strip().splitlines() == [
            f"Error: {path}:6:19: groups[0].tasks[1].image: String should have at least 1"
            " character"  # line 6, column 19: where `image` is
        ]
    assert get_json(manager.url, "/jobs") == []


def test_alloc_status_without_an_id_lists_allocations_by_job_and_node(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    """Like ``cube status`` and ``cube job status``: no ID, a list (of the allocations
    placed: a job that fits no node has none)."""
    manager = start_manager()
    worker = start_worker("--manager", manager.url)
    wait_node(manager.url, worker.name, "ready")
    nowhere_file = job_file(tmp_path, "mars", count=1, group={"constraints": {"zone": "mars"}})
    for path in (job_file(tmp_path, "shop", count=1), job_file(tmp_path, "blog", count=1)):
        ran = cube(manager, "job", "run", "--detach", str(path))
        assert ran.returncode == 0, ran.stderr
    assert cube(manager, "job", "run", "--detach", str(nowhere_file)).returncode == 0
    for name in ("shop", "blog"):
        wait_allocs(manager.url, name, 1)
    wait_for(
        lambda: get_json(manager.url, "/jobs/mars")["placement_failures"],
        timeout=30,
        what="job mars blocked",
    )
    listed = cube(manager, "alloc", "status")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[1] for line in listed.stdout.splitlines()[1:]]
    assert names == ["blog.web[0]", "shop.web[0]"]  # by job, then group and index
    shop = cube(manager, "alloc", "status", "--job", "shop", "-o", "json")
    assert shop.returncode == 0, shop.stderr
    assert [(a["job"], a["index"]) for a in json.loads(shop.stdout)] == [("shop", 0)]
    nowhere = cube(manager, "alloc", "status", "--node", "w9")  # a typo, not "nothing there"
    assert (nowhere.returncode, nowhere.stdout) == (1, "")
    assert "Error: node w9 not found" in nowhere.stderr
    one = json.loads(shop.stdout)[0]["id"]
    both = cube(manager, "alloc", "status", one, "--job", "shop")
    assert both.returncode == 2
    assert both.stderr.strip().splitlines()[-1].startswith("Error: --job and --node filter")


def test_scale_follows_the_job_and_fails_when_it_cannot_get_there(
    start_manager: Any, tmp_path: Path
) -> None:
    """Like ``cube job run``: a count no node can hold is exit 1 with the reason, not a
    silent 0 (no worker joined here: nothing fits)."""
    manager = start_manager()
    path = job_file(tmp_path, "life", count=0)
    assert cube(manager, "job", "run", str(path)).returncode == 0  # nothing to run: there
    scaled = cube(manager, "job", "scale", "life", "web", "2", "--timeout", "60")
    assert scaled.returncode == 1, scaled
    assert "life.web: 2 of 2 not placed: no node in datacenter dc1" in scaled.stderr
    detached = cube(manager, "job", "scale", "life", "web", "3", "--detach")
    assert (detached.returncode, detached.stdout) == (0, "life\n")
    assert [v["number"] for v in get_json(manager.url, "/jobs/life/versions")] == [1, 2, 3]


def test_plan_changes_nothing_and_says_what_cannot_be_placed(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager = start_manager()
    worker = start_worker("--manager", manager.url)
    wait_node(manager.url, worker.name, "ready")
    path = job_file(tmp_path, "big", count=2, group={"constraints": {"zone": "mars"}})
    plan = cube(manager, "job", "plan", str(path))
    assert plan.returncode == 1, plan
    assert "zone" in plan.stdout  # the filter that stopped it
    assert get_json(manager.url, "/jobs") == []
    assert get_json(manager.url, "/allocations") == []
    ran = cube(manager, "job", "run", str(path))
    assert ran.returncode == 1
    assert "big.web: 2 of 2 not placed: no node has labels zone=mars" in ran.stderr
    assert "(filtered: constraints 1 node)" in ran.stderr
    assert get_json(manager.url, "/allocations") == []  # a failed placement records nothing


def test_a_job_run_before_any_node_is_blocked_then_placed_when_a_worker_joins(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager = start_manager()
    path = job_file(tmp_path, "early", count=2)
    ran = cube(manager, "job", "run", str(path), "--timeout", "20")
    assert ran.returncode == 1, ran
    assert "early.web: 2 of 2 not placed: no node in datacenter dc1" in ran.stderr
    assert "job early stays, blocked" in ran.stderr
    detail = get_json(manager.url, "/jobs/early")
    assert (detail["job"]["status"], detail["job"]["status_reason"]) == (
        "pending",
        "blocked: web: 2 of 2 not placed: no node in datacenter dc1",
    )
    assert detail["placement_failures"]["web"]["count"] == 2
    assert detail["allocations"] == []  # as in Nomad: a blocked placement, no allocation
    assert get_json(manager.url, "/allocations") == []
    status = cube(manager, "job", "status", "early")
    row = next(line.split() for line in status.stdout.splitlines() if line.startswith("web "))
    assert row[:4] == ["web", "2", "2", "0"]  # GROUP DESIRED QUEUED PENDING
    assert 'Group "web" (2 of 2 not placed):' in status.stdout

    worker = start_worker("--manager", manager.url)
    allocs = wait_allocs(manager.url, "early", 2)
    assert {a["node"] for a in allocs} == {worker.name}
    job = get_json(manager.url, "/jobs/early")["job"]
    assert (job["status"], job["status_reason"]) == ("running", "2 allocations running")
    assert_job_converges(manager, "early", [worker])


# --- tasks that reach each other by name (the worker's allocation runner) -------------------------
def test_shop_example_reaches_the_api_through_the_proxy_and_survives_a_killed_worker(
    start_manager: Any, start_worker: Any
) -> None:
    manager, a, b = two_node_cluster(start_manager, start_worker)
    shop = EXAMPLES / "shop.yaml"
    ran = cube(manager, "job", "run", str(shop), "--timeout", "60")
    assert ran.returncode == 0, ran.stderr
    allocs = wait_allocs(manager.url, "shop", 3)
    assert {x["node"] for x in allocs} == {a.name, b.name}  # spread over both
    assert_proxies_answer(manager, allocs)

    a.kill()  # kill -9: its allocations are replaced on b, then it comes back
    wait_node(manager.url, a.name, "down", timeout=NODE_TIMEOUT + 5)
    moved = wait_for(
        lambda: [x for x in running_holders(manager.url, "shop", 3) if x["node"] == b.name],
        timeout=60,
        what="every allocation of shop running on the worker left",
    )
    assert len(moved) == 3
    assert_proxies_answer(manager, moved)
    a.start()
    wait_node(manager.url, a.name, "ready")
    # One live copy of each task, and no network of a lost allocation left on either node.
    assert_job_converges(manager, "shop", [a, b])
    networks = alloc_networks([a.name, b.name])
    assert set(networks) == {(x["id"], x["node"]) for x in holders(manager.url, "shop")}


def assert_proxies_answer(manager: Any, allocs: list[dict[str, Any]]) -> None:
    """``curl`` on each allocation's host port reaches its API through its proxy, and the
    CLI shows that port and names each task of the allocation."""
    tasks = {t["id"]: t for t in get_json(manager.url, "/tasks")}
    for alloc in allocs:
        proxy = tasks[alloc["tasks"]["proxy"]["id"]]
        (port,) = [p["host"] for p in proxy["ports"] if p["container"] == 8080]
        page = api.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200
        # The api task's page (scripts/build-image.sh writes it), fetched by the proxy.
        assert "Hello from a Cube task." in page.text
        # Where a user finds that port, and how they name each task of the allocation.
        shown = cube(manager, "alloc", "status", alloc["id"][:6])
        assert shown.returncode == 0, shown.stderr
        short = alloc["id"][:12]
        assert f"{short}-proxy" in shown.stdout
        assert f"{port}->8080/tcp" in shown.stdout
        assert f"{short}-api" in cube(manager, "status").stdout
        one = cube(manager, "status", f"{short}-proxy", "-o", "json")
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["id"] == proxy["id"]
