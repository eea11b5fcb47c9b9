"""A placement that finds no node records nothing: the job says how many and why.

As Nomad leaves a blocked evaluation, not an allocation: the pure reading of a group's
placement failure (:mod:`cube.job.blocked`) in table tests, then the in-process manager
with fake nodes (the helpers of tests/test_job_applier.py): nothing in
``/v1/allocations`` or the store, the job's status and JSON name the filter and the
count, and a node that joins takes the placements. Batch parallelism, system jobs and a
new version that cannot be placed behave; an older store's unplaced allocations are
ignored on load.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cube.job.blocked import (
    BlockedGroup,
    PlacementFailure,
    blocked_groups,
    blocked_status,
    failure_of,
)
from cube.job.model import Allocation, AllocDesired, AllocStatus, JobStatus, group_hash
from cube.job.parse import parse_job
from cube.job.spec import JobSpec
from cube.manager.api import create_app
from cube.manager.core import Manager
from cube.node import Node, Resources
from cube.scheduler import Decision
from cube.store.memory import MemoryStore
from tests.support.fake_nodes import (
    NOW,
    FakeWorkers,
    make_manager,
    node,
    run_all,
    settle,
)

CPU = PlacementFailure(count=2, reason="no node has 8.0 free CPU", filtered={"cpu": 3, "ports": 1})


def spec_of(kind: str = "service", count: int | None = 3, **group: Any) -> JobSpec:
    counted = {} if count is None else {"count": count}
    tasks = [{"name": "api", "image": "busybox", "resources": {"cpu": 0.5}}]
    return parse_job(
        {
            "job": "shop",
            "type": kind,
            "groups": [{"name": "web", "tasks": tasks, **counted, **group}],
        }
    )


def holder(index: int, **fields: Any) -> Allocation:
    return Allocation(
        job="shop", group="web", index=index, version=1, group_hash="h", node="n1", **fields
    )


# --- the pure reading ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "count", "held", "failed", "waiting", "line"),
    [
        ("service", 3, 0, 1, 3, "web: 3 of 3 not placed: no node has 8.0 free CPU"),
        ("service", 3, 2, 1, 1, "web: 1 of 3 not placed: no node has 8.0 free CPU"),
        # A new version's replacement found no node while the old ones hold every slot.
        ("service", 3, 3, 1, 1, "web: 1 of 3 not placed: no node has 8.0 free CPU"),
        # Batch parallelism 2: two tried and waited, all four wait for a node.
        ("batch", 4, 0, 2, 4, "web: 4 of 4 not placed: no node has 8.0 free CPU"),
        ("system", None, 1, 2, 2, "web: 2 not placed: no node has 8.0 free CPU"),
    ],
)
def test_a_groups_failure_says_how_many_wait_for_a_node(
    kind: str, count: int | None, held: int, failed: int, waiting: int, line: str
) -> None:
    failure = CPU.model_copy(update={"count": failed})
    allocs = [holder(i) for i in range(held)]
    allocs.append(holder(9, desired=AllocDesired.STOP))  # not a holder: not counted
    (group,) = blocked_groups(spec_of(kind, count), allocs, {"web": failure})
    assert (group.waiting, group.line) == (waiting, line)


def test_a_failure_names_each_filter_with_the_nodes_it_stopped() -> None:
    group = BlockedGroup("web", 2, 3, CPU)
    assert group.lines() == [
        "no node has 8.0 free CPU",
        '* Filter "cpu": 3 nodes',
        '* Filter "ports": 1 node',
    ]
    assert group.filtered_line == (
        "web: 2 of 3 not placed: no node has 8.0 free CPU (filtered: cpu 3 nodes, ports 1 node)"
    )
    bare = BlockedGroup("web", 1, None, PlacementFailure(count=1, reason="no nodes"))
    assert (bare.lines(), bare.filtered_line) == (["no nodes"], "web: 1 not placed: no nodes")


def test_a_failure_is_what_the_schedulers_decision_says() -> None:
    decision = Decision(
        node=None,
        algorithm="binpack",
        reason="no node fits",
        filtered_counts={"memory": 2},
        examined=2,
        total=2,
    )
    assert failure_of(decision, 4) == PlacementFailure(
        count=4, reason="no node fits", filtered={"memory": 2}, examined=2, total=2
    )


@pytest.mark.parametrize(
    ("status", "reason", "failures", "expected"),
    [
        (JobStatus.PENDING, "no allocation runs yet", {}, None),
        (
            JobStatus.PENDING,
            "no allocation runs yet",
            {"web": CPU},
            (JobStatus.PENDING, "blocked: web: 3 of 3 not placed: no node has 8.0 free CPU"),
        ),
        (
            JobStatus.RUNNING,
            "1 allocation running",
            {"web": CPU},
            (
                JobStatus.RUNNING,
                "1 allocation running; blocked: web: 2 of 3 not placed: no node has 8.0 free CPU",
            ),
        ),
        (JobStatus.DEAD, "stopped", {"web": CPU}, None),
        (JobStatus.PENDING, "no allocation runs yet", {"gone": CPU}, None),  # not a group now
    ],
)
def test_the_jobs_status_says_it_is_blocked(
    status: JobStatus,
    reason: str,
    failures: dict[str, PlacementFailure],
    expected: tuple[JobStatus, str] | None,
) -> None:
    allocs = [holder(0)] if status is JobStatus.RUNNING else []
    got = blocked_status(spec_of(), status, reason, allocs, failures)
    assert got == (expected or (status, reason))


# --- the manager --------------------------------------------------------------------------------


def sized(name: str, cpu: float) -> Node:
    return node(name).model_copy(update={"capacity": Resources(cpu=cpu, memory=1024**3)})


async def test_a_job_that_fits_no_node_records_nothing_and_says_why_until_a_node_joins() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(sized("small", 0.25))
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec_of(count=2))
    await manager.jobs.reconcile_all(NOW)
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        assert (await client.get("/v1/allocations")).json() == []
        detail = (await client.get("/v1/jobs/shop")).json()
    assert store.list_allocations() == []
    assert workers.sent == []
    assert detail["allocations"] == []
    why = "no node has 0.5 free CPU; largest free: 0.25 on small"
    assert detail["placement_failures"] == {
        "web": {"count": 2, "reason": why, "filtered": {"cpu": 1}, "examined": 1, "total": 1}
    }
    assert (detail["job"]["status"], detail["job"]["status_reason"]) == (
        "pending",
        f"blocked: web: 2 of 2 not placed: {why}",
    )

    manager.nodes["big"] = node("big")
    manager._capacity_changed()  # a node joined
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert {a.node for a in manager.jobs.allocations()} == {"big"}
    assert len(store.list_allocations()) == 2
    assert manager.jobs.failures("shop") == {}
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.job("shop").status_reason == "2 allocations running"
    await manager.close()


async def test_a_blocked_group_that_is_scaled_to_what_runs_is_blocked_no_more() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(sized("n1", 1.0))  # room for two
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec_of(count=3))
    await manager.jobs.reconcile_all(NOW)
    assert len(manager.jobs.allocations()) == 2
    assert manager.jobs.failures("shop")["web"].count == 1
    await manager.jobs.scale("shop", "web", 2)  # a new version: tried again at once
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.failures("shop") == {}
    assert not manager.jobs.job("shop").status_reason.startswith("blocked")
    await manager.close()


async def test_a_new_version_that_fits_is_placed_without_waiting_for_the_cluster() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec_of(count=1, constraints={"zone": "mars"}))
    await manager.jobs.reconcile_all(NOW)
    failure = manager.jobs.failures("shop")["web"]
    assert (failure.reason, failure.filtered) == (
        "no node has labels zone=mars",
        {"constraints": 1},
    )
    await manager.jobs.submit(spec_of(count=1))  # the capacity did not change; the job did
    await manager.jobs.reconcile_all(NOW)
    assert [a.node for a in manager.jobs.allocations()] == ["n1"]
    await manager.close()


async def test_a_batch_job_that_fits_nowhere_tries_its_parallelism_and_queues_the_rest() -> None:
    manager = make_manager(MemoryStore(), FakeWorkers())  # no node
    await manager.jobs.submit(spec_of("batch", count=4, parallelism=2))
    for _ in range(2):
        await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.allocations() == []
    assert manager.jobs.failures("shop")["web"].count == 2  # the two parallelism admits
    assert manager.jobs.job("shop").status_reason == (
        "blocked: web: 4 of 4 not placed: no node in datacenter dc1"
    )
    manager.nodes["n1"] = node("n1")
    manager._capacity_changed()
    await manager.jobs.reconcile_all(NOW)
    assert len(manager.jobs.allocations()) == 2  # parallelism 2
    assert manager.jobs.failures("shop") == {}
    await manager.close()


async def test_a_system_job_runs_where_it_fits_and_says_how_many_nodes_it_does_not() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("big"))
    store.save_node(sized("small", 0.25))
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec_of("system", count=None))
    await manager.jobs.reconcile_all(NOW)
    assert [a.node for a in manager.jobs.allocations()] == ["big"]
    failure = manager.jobs.failures("shop")["web"]
    assert (failure.count, failure.filtered) == (1, {"cpu": 1})
    assert manager.jobs.job("shop").status_reason == (
        "blocked: web: 1 not placed: no node has 0.5 free CPU; largest free: 0.25 on small"
    )
    await manager.close()


async def test_a_system_job_too_big_for_some_nodes_runs_on_every_other_one() -> None:
    """Each system placement is for one node: the small nodes that come first in the
    plan hold back none of the big ones, in this pass or the next."""
    store, workers = MemoryStore(), FakeWorkers()
    for name in ("a-small", "b-small"):
        store.save_node(sized(name, 0.25))
    for name in ("c-big", "d-big"):
        store.save_node(node(name))
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec_of("system", count=None))
    for _ in range(2):  # the second pass retries nothing, and says the same
        await manager.jobs.reconcile_all(NOW)
        assert sorted(a.node for a in manager.jobs.allocations()) == ["c-big", "d-big"]
        failure = manager.jobs.failures("shop")["web"]
        assert (failure.count, failure.filtered) == (2, {"cpu": 1})
        assert manager.jobs.job("shop").status_reason.endswith(
            "blocked: web: 2 not placed: no node has 0.5 free CPU; largest free: 0.25 on a-small"
        )

    manager.nodes["e-big"] = node("e-big")  # joins: every node is tried again
    manager._capacity_changed()
    await manager.jobs.reconcile_all(NOW)
    assert sorted(a.node for a in manager.jobs.allocations()) == ["c-big", "d-big", "e-big"]
    assert manager.jobs.failures("shop")["web"].count == 2
    await manager.close()


async def running(manager: Manager, spec: JobSpec) -> list[Allocation]:
    await manager.jobs.submit(spec)
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    return manager.jobs.allocations()


async def test_a_new_version_that_fits_nowhere_leaves_the_old_allocations_running() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))  # 4 CPU
    manager = make_manager(store, workers)
    old = await running(manager, spec_of(count=2))
    assert len(old) == 2
    big = [{"name": "api", "image": "busybox:2", "resources": {"cpu": 8}}]
    spec = parse_job({"job": "shop", "groups": [{"name": "web", "count": 2, "tasks": big}]})
    await manager.jobs.submit(spec)
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    allocs = manager.jobs.allocations()
    assert [a.id for a in allocs] == [a.id for a in old]  # no new record
    assert all(a.desired is AllocDesired.RUN and a.replaced_by is None for a in allocs)
    assert manager.jobs.failures("shop")["web"].count == 1  # max_parallel 1: one tried
    job = manager.jobs.job("shop")
    assert job.status is JobStatus.RUNNING
    assert job.status_reason == (
        "2 allocations running; blocked: web: 1 of 2 not placed:"
        " no node has 8.0 free CPU; largest free: 3.5 on n1"  # the one it replaces freed
    )
    await manager.close()


async def test_a_stop_first_update_may_take_the_room_of_the_allocation_it_replaces() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(sized("n1", 1.0))
    manager = make_manager(store, workers)
    tasks = [{"name": "api", "image": "busybox", "resources": {"cpu": 0.75}}]
    (old,) = await running(
        manager, parse_job({"job": "shop", "groups": [{"name": "web", "count": 1, "tasks": tasks}]})
    )
    tasks[0]["image"] = "busybox:2"  # 0.75 CPU again: only where the old one was
    await manager.jobs.submit(
        parse_job({"job": "shop", "groups": [{"name": "web", "count": 1, "tasks": tasks}]})
    )
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    new = manager.jobs.allocation(manager.jobs.allocation(old.id).replaced_by or "")
    assert (new.node, new.version) == ("n1", 2)
    assert manager.jobs.allocation(old.id).desired is AllocDesired.STOP
    assert manager.jobs.failures("shop") == {}
    await manager.close()


async def test_an_older_stores_unplaced_allocations_are_ignored_on_load() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))
    manager = make_manager(store, workers)
    (placed,) = await running(manager, spec_of(count=1))
    await manager.close()
    spec = spec_of(count=2)
    hash = group_hash(spec, spec.groups[0])
    # As an older Cube left them: a slot's allocation without a node, and a replacement
    # without one whose predecessor runs on (start-first).
    waiting = Allocation(job="shop", group="web", index=1, version=1, group_hash=hash)
    waiting.placement, waiting.status_reason = {"node": None}, "no node in datacenter dc1"
    successor = waiting.model_copy(update={"id": "successor", "index": 0, "replaces": placed.id})
    placed.replaced_by = successor.id
    store.save_allocations([waiting, successor, placed])

    again = make_manager(store, FakeWorkers())
    assert [a.id for a in again.jobs.allocations()] == [placed.id]
    assert again.jobs.allocation(placed.id).replaced_by is None  # it holds its slot again
    assert again.jobs.allocation(placed.id).status is AllocStatus.RUNNING
    await again.close()


async def test_plan_says_which_groups_would_not_be_placed_and_why() -> None:
    store = MemoryStore()
    store.save_node(sized("small", 0.25))
    manager = make_manager(store, FakeWorkers())
    transport = httpx.ASGITransport(app=create_app(manager))
    body = spec_of(count=2).model_dump(mode="json")
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        plan = (await client.post("/v1/jobs/plan", json=body)).json()
    why = "no node has 0.5 free CPU; largest free: 0.25 on small"
    assert plan["unplaceable"] == 2
    assert plan["placement_failures"]["web"]["count"] == 2
    assert plan["placement_failures"]["web"]["filtered"] == {"cpu": 1}
    assert (plan["status"], plan["status_reason"]) == (
        "pending",
        f"blocked: web: 2 of 2 not placed: {why}",
    )
    assert manager.jobs.jobs == {}  # a dry run
    await manager.close()


async def test_a_restarted_manager_finds_the_placement_failure_again_in_its_first_pass() -> None:
    store = MemoryStore()
    manager = make_manager(store, FakeWorkers())  # no node
    await manager.jobs.submit(spec_of(count=3))
    await manager.jobs.reconcile_all(NOW)
    before = manager.jobs.failures("shop")
    await manager.close()

    again = make_manager(store, FakeWorkers())
    assert again.jobs.failures("shop") == {}  # nothing of it was stored
    await again.jobs.reconcile_all(NOW)
    assert again.jobs.failures("shop") == before
    assert before["web"].count == 3
    assert store.list_allocations() == []
    await again.close()
