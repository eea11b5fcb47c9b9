"""The job service's passes at scale, in-process: which jobs a pass looks at, and how it
gives the event loop back (slices, the send backlog), without Docker.

A pass that is not full looks only at the jobs that changed; the full pass every
FULL_PASS seconds looks at all of them. Each test drives passes by hand with the
clock it chooses, as tests/component/test_job_applier.py does.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from cube.job.deployment import Deployment
from cube.job.eligibility import NodeView
from cube.job.model import AllocStatus, Job, JobVersion
from cube.job.plan import Plan
from cube.job.reconcile import reconcile
from cube.job.spec import JobSpec, JobType
from cube.manager.core import Manager
from cube.manager.job_changes import EVERYTHING, JobChanges, Todo
from cube.manager.jobs import JobService
from cube.node import Node
from cube.store.memory import MemoryStore
from cube.task.state import State
from tests.support.fake_nodes import (
    NOW,
    FakeWorkers,
    job_spec,
    make_manager,
    node,
    run_all,
    settle,
    submitted,
)


async def passes(service: JobService, now: datetime = NOW, *, full: bool = False) -> int:
    """Run one pass to its end; returns how often it paused for the loop."""
    await service.loop.run_pass(now, full=full)
    return max(0, service.loop.slices - 1)


@pytest.fixture
def reconciled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The IDs of the jobs the reconciler is called for, in order."""
    calls: list[str] = []

    def spy(
        job: Job,
        version: JobVersion,
        allocs: Any,
        nodes: list[NodeView],
        now: datetime,
        deployment: Deployment | None = None,
    ) -> Plan:
        calls.append(job.id)
        return reconcile(job, version, allocs, nodes, now, deployment=deployment)

    monkeypatch.setattr("cube.manager.job_loop.reconcile", spy)
    return calls


def in_dc(name: str, datacenter: str, count: int = 1) -> JobSpec:
    spec = job_spec(count=count)
    return spec.model_copy(update={"job": name, "datacenters": [datacenter]})


async def two_jobs() -> Manager:
    """Jobs ``a`` (one allocation on n1, in dc1) and ``b`` (on n2, in dc2), running."""
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))
    store.save_node(node("n2", dc="dc2"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(in_dc("a", "dc1"))
    await manager.jobs.submit(in_dc("b", "dc2"))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    assert {(a.job, a.node, a.status) for a in manager.jobs.allocations()} == {
        ("a", "n1", AllocStatus.RUNNING),
        ("b", "n2", AllocStatus.RUNNING),
    }
    return manager


async def test_a_pass_reconciles_only_the_job_whose_allocation_changed(
    reconciled: list[str],
) -> None:
    manager = await two_jobs()
    reconciled.clear()
    assert await passes(manager.jobs) == 0
    assert reconciled == []  # nothing changed: nothing to look at

    task = manager.tasks[manager.jobs.allocations(job="a")[0].tasks["api"].id]
    manager._save(task, task.transition(State.FAILED, "exited", exit_code=1))
    await passes(manager.jobs)
    assert reconciled == ["a"]
    await manager.close()


async def test_a_task_change_that_changes_no_allocation_reconciles_nothing(
    reconciled: list[str],
) -> None:
    # A batch job: a service's deployment judges its allocations' health at every task
    # change (a health check that passes changes no allocation's status), so a job with a
    # deployment under way is reconciled then.
    batch = job_spec(count=1).model_copy(update={"type": JobType.BATCH})
    _, _, manager = await submitted(batch, "n1")  # two tasks in one allocation
    await passes(manager.jobs)
    reconciled.clear()
    first = next(t for t in manager.tasks.values() if t.state is State.SCHEDULED)
    manager._save(first, first.transition(State.RUNNING, "started"))
    await passes(manager.jobs)
    assert reconciled == []  # derived (one task of two runs): still Pending, no new plan
    run_all(manager)
    await passes(manager.jobs)
    assert reconciled == ["shop"]
    assert manager.jobs.allocations()[0].status is AllocStatus.RUNNING
    await manager.close()


async def test_a_node_that_changes_reconciles_the_jobs_on_it(reconciled: list[str]) -> None:
    manager = await two_jobs()
    reconciled.clear()
    await manager.drain("n2")
    await passes(manager.jobs)
    assert reconciled == ["b"]
    await manager.close()


async def test_a_node_whose_labels_change_reconciles_the_jobs_on_it(
    reconciled: list[str],
) -> None:
    manager = await two_jobs()
    reconciled.clear()
    n2 = manager.nodes["n2"]
    n2.labels = {**n2.labels, "zone": "b"}  # as a collection pass records a new label
    await passes(manager.jobs)
    assert reconciled == ["b"]
    await manager.close()


async def test_the_full_pass_sees_a_change_nobody_reported(reconciled: list[str]) -> None:
    manager = await two_jobs()
    task = manager.tasks[manager.jobs.allocations(job="b")[0].tasks["api"].id]
    task.transition(State.FAILED, "exited", exit_code=1)  # changed, but not through _save
    reconciled.clear()
    await passes(manager.jobs)
    assert reconciled == []
    await passes(manager.jobs, full=True)
    assert reconciled == ["a", "b"]
    b = next(a for a in manager.jobs.allocations(job="b") if a.node == "n2")
    assert b.status is AllocStatus.FAILED
    await manager.close()


async def test_a_pass_pauses_between_slices_and_places_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cube.manager.job_loop.SLICE", 0.0)  # every slice ends at once
    _, _, manager = await submitted(job_spec(count=0), "n1", "n2")
    await manager.jobs.submit(job_spec(count=4))
    assert await passes(manager.jobs) == 3  # one placement per slice, a pause between two
    assert len(manager.jobs.allocations()) == 4
    await manager.close()


async def test_a_pass_stops_placing_while_the_sends_are_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cube.manager.job_applier.SEND_BACKLOG", 2)
    _, _, manager = await submitted(job_spec(count=0), "n1")
    await manager.jobs.submit(job_spec(count=3))
    await passes(manager.jobs)
    # One allocation of two tasks: two sends queued, so the pass stops and asks for more.
    assert len(manager.jobs.allocations()) == 1
    assert manager.jobs.loop._wake.is_set()
    await settle(manager)  # the nodes were told
    await passes(manager.jobs)
    await settle(manager)
    await passes(manager.jobs)
    assert len(manager.jobs.allocations()) == 3
    await manager.close()


# --- JobChanges alone ---------------------------------------------------------------------------


def todo(
    changes: JobChanges, nodes: dict[str, Node], *, generation: int = 0, **options: Any
) -> Any:
    return changes.todo(
        ["a", "b", "sys"],
        nodes,
        NOW,
        full=options.get("full", False),
        jobs_on=lambda name: ["a"] if name == "n1" else [],
        system=lambda: ["sys"],
        blocked=lambda: ["b"],
        generation=generation,
    )


def test_job_changes_say_what_each_pass_looks_at() -> None:
    nodes = {"n1": node("n1"), "n2": node("n2")}
    changes = JobChanges(["a", "b", "sys"])
    assert todo(changes, nodes) == dict.fromkeys(["a", "b", "sys"], EVERYTHING)  # the start
    assert todo(changes, nodes) == {}  # nothing happened

    changes.alloc_changed("a", "a1")
    changes.unfinished.add("b")
    assert todo(changes, nodes) == {"a": Todo({"a1"}, lazy=True), "b": Todo(set())}

    changes.job_changed("b")
    changes.due("sys", NOW)
    changes.due("a", NOW + timedelta(seconds=1))
    assert todo(changes, nodes) == {"b": EVERYTHING, "sys": EVERYTHING}
    assert changes.wake_at() == NOW  # until its pass sets another
    changes.due("sys", None)

    assert todo(changes, nodes, generation=1) == {"b": EVERYTHING}  # capacity: the blocked
    nodes["n1"] = nodes["n1"].model_copy(update={"drain": True})
    assert todo(changes, nodes, generation=1) == {"a": EVERYTHING, "sys": EVERYTHING}
    del nodes["n2"]  # gone: the system job looks again
    assert todo(changes, nodes, generation=1) == {"sys": EVERYTHING}
    assert todo(changes, nodes, generation=1, full=True) == dict.fromkeys(
        ["a", "b", "sys"], EVERYTHING
    )
