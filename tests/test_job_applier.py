"""The manager's job service, without Docker: its pure decisions, and its passes in-process.

The pure parts (an allocation's status from its tasks, task IDs, which nodes count as
bad, the CLI's judgement of a job's progress) are table tests. The applier runs in an
in-process manager whose nodes are a fake WorkerClient that records what it is sent;
each test drives passes with :meth:`JobService.reconcile_all` and the clock it chooses.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from cube.auth import Authenticator, Role
from cube.cli.agent_options import NodeOptions
from cube.cli.job_follow import judge
from cube.cli.main import cli
from cube.errors import NotFound
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobStatus,
)
from cube.job.spec import JobSpec, JobType, parse_job
from cube.job.wire import JobDetail
from cube.manager.allocs import (
    MAX_TASK_ID,
    alloc_task_id,
    blocked_status,
    derive_status,
    on_bad_node,
    passed_over,
)
from cube.manager.api import create_app
from cube.manager.core import Manager
from cube.manager.pass_views import PassViews
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState, Resources
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import DesiredState, Task
from cube.task.spec import RestartPolicy, RestartPolicyName, TaskRequest, TaskSpec
from cube.task.state import State

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CAPACITY = Resources(cpu=4, memory=1024**3, disk=10 * 1024**3)


# --- derive_status ------------------------------------------------------------------------------


def alloc(**fields: Any) -> Allocation:
    base: dict[str, Any] = {
        "id": "a1",
        "job": "shop",
        "group": "web",
        "index": 0,
        "version": 1,
        "group_hash": "h",
        "node": "n1",
    }
    return Allocation(**{**base, **fields})


def task(name: str, state: State, *, restart: str = "never", **fields: Any) -> Task:
    spec = TaskSpec(
        name=name, image="busybox", restart=RestartPolicy(policy=RestartPolicyName(restart))
    )
    return Task(id=f"a1-{name}", spec=spec, state=state, **fields)


def test_every_task_running_makes_the_allocation_running() -> None:
    derived = derive_status(
        alloc(), {"api": task("api", State.RUNNING), "proxy": task("proxy", State.RUNNING)}
    )
    assert derived.status is AllocStatus.RUNNING


def test_a_task_that_failed_for_good_fails_the_allocation_and_its_siblings_are_stopped() -> None:
    derived = derive_status(
        alloc(status=AllocStatus.RUNNING),
        {
            "api": task("api", State.FAILED, exit_code=3, reason="exited with code 3"),
            "proxy": task("proxy", State.RUNNING),
        },
    )
    assert derived.status is AllocStatus.FAILED
    assert "task api failed (exit code 3)" in derived.reason
    assert derived.leftovers == ("a1-proxy",)


def test_a_failed_task_its_node_will_restart_changes_nothing() -> None:
    failed = task("api", State.FAILED, restart="on-failure", exit_code=1, restarts=0)
    derived = derive_status(alloc(status=AllocStatus.RUNNING), {"api": failed})
    assert derived.status is None
    assert derived.leftovers == ()


def test_a_failed_task_the_manager_ended_is_done_whatever_its_restart_policy() -> None:
    ended = task("api", State.FAILED, restart="always", desired=DesiredState.STOP)
    assert derive_status(alloc(), {"api": ended}).status is AllocStatus.FAILED


def test_every_task_completed_makes_the_allocation_complete() -> None:
    tasks = {
        "a": task("a", State.COMPLETED, exit_code=0),
        "b": task("b", State.COMPLETED, exit_code=0),
    }
    assert derive_status(alloc(status=AllocStatus.RUNNING), tasks).status is AllocStatus.COMPLETE


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((State.COMPLETED, State.FAILED), AllocStatus.COMPLETE),
        ((State.COMPLETED, State.RUNNING), None),  # still stopping
    ],
)
def test_a_stopped_allocation_is_complete_once_every_task_ended(
    states: tuple[State, State], expected: AllocStatus | None
) -> None:
    stopped = alloc(status=AllocStatus.RUNNING, desired=AllocDesired.STOP, desired_reason="scaled")
    tasks = {"a": task("a", states[0]), "b": task("b", states[1])}
    derived = derive_status(stopped, tasks)
    assert derived.status is expected
    if expected is not None:
        assert derived.reason == "stopped: scaled"


def test_a_restart_in_place_does_not_take_a_running_allocation_back_to_pending() -> None:
    tasks = {"a": task("a", State.SCHEDULED), "b": task("b", State.RUNNING)}
    assert derive_status(alloc(status=AllocStatus.RUNNING), tasks).status is None


def test_a_missing_task_says_nothing_yet() -> None:
    assert derive_status(alloc(), {"a": task("a", State.RUNNING), "b": None}).status is None


def test_task_ids_come_from_the_allocation_and_the_name_and_fit_the_api() -> None:
    assert alloc_task_id("a" * 32, "api") == "a" * 32 + "-api"
    long_one, long_two = alloc_task_id("a" * 32, "x" * 63), alloc_task_id("a" * 32, "x" * 62 + "y")
    assert len(long_one) <= MAX_TASK_ID
    assert len(long_two) <= MAX_TASK_ID
    assert long_one != long_two
    TaskRequest(name="t", image="busybox", id=long_one)  # the API accepts it


@pytest.mark.parametrize(
    ("state", "drain", "desired", "bad"),
    [
        (NodeState.READY, False, AllocDesired.RUN, False),
        (NodeState.DOWN, False, AllocDesired.RUN, True),
        (NodeState.DOWN, False, AllocDesired.STOP, True),  # a lost one stays Lost
        (NodeState.DRAINING, True, AllocDesired.RUN, True),  # to be migrated
        (NodeState.DRAINING, True, AllocDesired.STOP, False),  # migrated: Complete once stopped
    ],
)
def test_which_nodes_say_nothing_of_an_allocations_tasks(
    state: NodeState, drain: bool, desired: AllocDesired, bad: bool
) -> None:
    node = Node(name="n1", address="http://n1", state=state, drain=drain)
    assert on_bad_node(alloc(desired=desired), {"n1": node}) is bad


def test_a_node_that_is_gone_is_bad() -> None:
    assert on_bad_node(alloc(), {}) is True


def test_nodes_without_the_jobs_allocations_come_first() -> None:
    nodes = [node(n) for n in ("n1", "n2", "n3")]
    skip = passed_over(["n1"], avoid="n3")
    assert skip == {"n1", "n3"}
    spec = TaskSpec(name="t", image="busybox")
    scheduler = make_scheduler("epvm")
    for _ in range(3):  # whatever the window's cursor: the one node not passed over
        assert scheduler.place(spec, nodes, skip=skip).node == "n2"
    # Passed over is not rejected: with every node passed over, none is a candidate,
    # and none is named as filtered (the applier then tries every node).
    nothing = scheduler.place(spec, nodes, skip={"n1", "n2", "n3"})
    assert (nothing.node, nothing.filtered) == (None, {})


# --- judge: cube job run's verdict ----------------------------------------------------------------

SERVICE = parse_job(
    {"job": "shop", "groups": [{"name": "web", "count": 2, "tasks": [{"name": "a", "image": "b"}]}]}
)


def detail(
    *allocs: Allocation, spec: JobSpec = SERVICE, status: JobStatus = JobStatus.RUNNING
) -> JobDetail:
    return JobDetail(
        job=Job(id=spec.job, status=status, status_reason="why"),
        spec=spec,
        allocations=list(allocs),
    )


def test_a_service_is_there_when_count_allocations_run() -> None:
    running = [alloc(id=f"a{i}", index=i, status=AllocStatus.RUNNING) for i in range(2)]
    verdict = judge(detail(*running))
    assert verdict.done
    assert not verdict.failed
    assert verdict.line() == "web: 2 placed, 2 running of 2"


def test_a_service_on_its_way_is_neither_done_nor_failed() -> None:
    verdict = judge(detail(alloc(status=AllocStatus.RUNNING), alloc(id="a2", index=1)))
    assert not verdict.done
    assert not verdict.failed


def test_an_allocation_that_fits_nowhere_fails_the_run_with_the_filters_reason() -> None:
    stuck = alloc(id="a2", index=1, node=None, placement={}, status_reason="no node has 9 free CPU")
    verdict = judge(detail(alloc(status=AllocStatus.RUNNING), stuck))
    assert verdict.failed == ["shop.web[1] cannot be placed: no node has 9 free CPU"]


def test_an_allocation_that_fits_nowhere_waits_while_another_is_stopping() -> None:
    stuck = alloc(id="a2", index=1, node=None, placement={}, status_reason="no node fits")
    stopping = alloc(id="a3", desired=AllocDesired.STOP, status=AllocStatus.RUNNING)
    assert judge(detail(alloc(status=AllocStatus.RUNNING), stuck, stopping)).failed == []


def test_a_batch_is_there_when_complete_and_has_failed_when_failed() -> None:
    batch = SERVICE.model_copy(update={"type": JobType.BATCH})
    done = [alloc(id=f"a{i}", index=i, status=AllocStatus.COMPLETE) for i in range(2)]
    assert judge(detail(*done, spec=batch, status=JobStatus.COMPLETE)).done
    failed = judge(detail(*done, spec=batch, status=JobStatus.FAILED))
    assert failed.failed == ["job shop failed: why"]


# --- the applier, in-process --------------------------------------------------------------------


class FakeWorkers(WorkerClient):
    """Every node accepts what it is sent; the test reads the requests."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, TaskRequest]] = []
        self.stopped: list[str] = []
        self.stop_reasons: dict[str, str | None] = {}

    async def run(self, address: str, request: TaskRequest) -> Task:
        self.sent.append((address, request))
        return Task(id=request.id or "", spec=request.spec())

    async def stop(
        self, address: str, task_id: str, *, wait: float, reason: str | None = None
    ) -> Task:
        self.stopped.append(task_id)
        self.stop_reasons[task_id] = reason
        raise NotFound(f"task {task_id} not found")


def node(name: str, *, dc: str = "dc1") -> Node:
    return Node(name=name, address=f"http://{name}", capacity=CAPACITY, labels={"datacenter": dc})


def make_manager(store: MemoryStore, workers: FakeWorkers) -> Manager:
    return Manager(store=store, scheduler=make_scheduler("round-robin"), workers=workers)


async def settle(manager: Manager) -> None:
    """Let the sends and stops the pass started finish."""
    for _ in range(3):
        await asyncio.gather(*manager._background, *manager.jobs.background, return_exceptions=True)
        await manager.registry.settled()


def job_spec(count: int = 3, **group: Any) -> JobSpec:
    tasks = [
        {"name": "api", "image": "busybox", "resources": {"cpu": 0.5, "memory": "64MiB"}},
        {"name": "proxy", "image": "busybox", "ports": ["8080"]},
    ]
    return parse_job(
        {"job": "shop", "groups": [{"name": "web", "count": count, "tasks": tasks, **group}]}
    )


async def submitted(spec: JobSpec, *nodes: str) -> tuple[MemoryStore, FakeWorkers, Manager]:
    """A manager with ``nodes`` that took ``spec`` and sent what its first pass placed."""
    store, workers = MemoryStore(), FakeWorkers()
    for name in nodes:
        store.save_node(node(name))
    manager = make_manager(store, workers)
    await manager.jobs.submit(spec)
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    return store, workers, manager


def run_all(manager: Manager) -> None:
    """Mark every task of every allocation Running, as the nodes would report."""
    for t in manager.tasks.values():
        if t.state is State.SCHEDULED and t.desired is DesiredState.RUN:
            manager._save(t, t.transition(State.RUNNING, "started"))


async def test_a_group_is_placed_as_one_unit_spread_over_the_nodes() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    for name in ("n1", "n2"):
        store.save_node(node(name))
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec())
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)

    allocs = manager.jobs.allocations(job="shop")
    assert sorted(a.index for a in allocs) == [0, 1, 2]
    assert {a.node for a in allocs} == {"n1", "n2"}  # spread: both nodes, not one
    on_n1 = manager.jobs.allocations(node="n1")
    assert on_n1
    assert on_n1 == [a for a in allocs if a.node == "n1"]
    for a in allocs:
        assert a.placement is not None
        assert a.placement["node"] == a.node
        ids = {f"{a.id}-api", f"{a.id}-proxy"}
        assert {t.id for t in a.tasks.values()} == ids
        for task_id in ids:
            t = manager.tasks[task_id]
            assert (t.node, t.state, t.alloc) == (a.node, State.SCHEDULED, t.alloc)
            assert t.alloc is not None
            # size: the group's two tasks, so the worker gives them a network to share
            assert (t.alloc.id, t.alloc.index, t.alloc.size) == (a.id, a.index, 2)
    # Every task was sent with its allocation, to its allocation's node.
    assert len(workers.sent) == 6
    assert all(r.alloc is not None and r.id == f"{r.alloc.id}-{r.name}" for _, r in workers.sent)

    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    assert {a.status for a in manager.jobs.allocations()} == {AllocStatus.RUNNING}
    assert manager.jobs.job("shop").status is JobStatus.RUNNING
    await manager.close()


async def test_a_lost_nodes_tasks_end_and_their_allocations_are_replaced_elsewhere() -> None:
    _, _, manager = await submitted(job_spec(count=2), "n1", "n2")
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    lost = next(a for a in manager.jobs.allocations() if a.node == "n2")

    await manager._mark_down(manager.nodes["n2"], "test")
    await manager._move_tasks_off(manager.nodes["n2"], "node n2 lost")
    for t in lost.tasks.values():
        record = manager.tasks[t.id]
        # Ended, still on n2 (a copy it runs when it returns is stopped), never Pending.
        assert (record.state, record.desired, record.node) == (
            State.FAILED,
            DesiredState.STOP,
            "n2",
        )
    await manager.dispatch()  # the task dispatcher leaves them alone
    assert all(manager.tasks[t.id].state is State.FAILED for t in lost.tasks.values())

    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    old = manager.jobs.allocation(lost.id)
    assert (old.status, old.desired) == (AllocStatus.LOST, AllocDesired.STOP)
    new = manager.jobs.allocation(old.replaced_by or "")
    assert (new.index, new.node, new.replaces) == (lost.index, "n1", lost.id)
    assert new.reschedule_events == []  # a lost allocation did not fail: no attempt used
    await manager.close()


async def test_a_restarted_manager_resumes_the_job_and_doubles_nothing() -> None:
    store, workers, manager = await submitted(job_spec(count=2), "n1")
    await manager.close()

    again = make_manager(store, workers)
    assert again.jobs.job("shop").version == 1
    assert len(again.jobs.allocations()) == 2
    _, created = await again.jobs.submit(job_spec(count=2))
    assert not created  # the same spec: no new version
    sent = len(workers.sent)
    await again.jobs.reconcile_all(NOW)
    await settle(again)
    assert len(again.jobs.allocations()) == 2
    assert len(workers.sent) == sent  # nothing placed or sent twice
    await again.close()


async def test_an_allocation_saved_before_its_tasks_gets_them_on_the_next_pass() -> None:
    store, workers, manager = await submitted(job_spec(count=1), "n1")
    a = manager.jobs.allocations()[0]
    await manager.close()
    for t in a.tasks.values():  # as if the manager crashed between the two writes
        store.delete_task(t.id)
    workers.sent.clear()
    again = make_manager(store, workers)
    await again.jobs.reconcile_all(NOW)
    await settle(again)
    assert sorted(r.id or "" for _, r in workers.sent) == sorted(t.id for t in a.tasks.values())
    assert again.jobs.allocations() == [a]  # the same allocation, not a new one
    await again.close()


async def test_no_node_in_the_jobs_datacenters_leaves_the_allocation_unplaced_saying_why() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1", dc="dc1"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec(count=1).model_copy(update={"datacenters": ["eu1"]}))
    await manager.jobs.reconcile_all(NOW)
    (a,) = manager.jobs.allocations()
    assert (a.node, a.status, a.status_reason) == (
        None,
        AllocStatus.PENDING,
        "no node in datacenter eu1",
    )
    assert workers.sent == []
    await manager.close()


async def test_a_failed_allocation_is_replaced_after_its_reschedule_delay() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec(count=1, reschedule={"attempts": 2, "delay": "10s"}))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    a = manager.jobs.allocations()[0]
    api = manager.tasks[a.tasks["api"].id]
    manager._save(api, api.transition(State.FAILED, "exited with code 1", exit_code=1))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert manager.jobs.allocation(a.id).status is AllocStatus.FAILED
    assert manager.tasks[a.tasks["proxy"].id].desired is DesiredState.STOP  # its sibling stops
    assert len(manager.jobs.allocations()) == 1  # not before the delay
    assert manager.jobs.loop._wake_at is not None

    await manager.jobs.reconcile_all(manager.jobs.loop._wake_at + timedelta(seconds=1))
    await settle(manager)
    new = manager.jobs.allocation(manager.jobs.allocation(a.id).replaced_by or "")
    assert new.replaces == a.id
    assert new.reschedule_attempts == 1
    await manager.close()


async def test_a_pass_that_fails_for_one_job_still_reconciles_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec(count=1).model_copy(update={"job": "broken"}))
    await manager.jobs.submit(job_spec(count=1))
    real = manager.jobs.loop.reconcile_job

    def flaky(job: Job, views: PassViews, now: datetime, **options: Any) -> bool:
        if job.id == "broken":
            raise RuntimeError("a bug")
        return real(job, views, now, **options)

    monkeypatch.setattr(manager.jobs.loop, "reconcile_job", flaky)
    await manager.jobs.reconcile_all(NOW)
    assert [a.job for a in manager.jobs.allocations()] == ["shop"]
    await manager.close()


async def test_the_task_api_refuses_alloc_naming_the_field() -> None:
    manager = make_manager(MemoryStore(), FakeWorkers())
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        body = {
            "name": "t",
            "image": "busybox",
            "alloc": {"id": "a1", "job": "j", "group": "g", "index": 0},
        }
        response = await client.post("/v1/tasks", json=body)
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["alloc"]
    assert manager.tasks == {}
    await manager.close()


async def test_job_routes_name_the_field_path_of_a_bad_job_and_create_nothing() -> None:
    manager = make_manager(MemoryStore(), FakeWorkers())
    transport = httpx.ASGITransport(app=create_app(manager))
    bad = "job: shop\ngroups:\n  - name: web\n    tasks:\n      - name: a\n        image: ''\n"
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        response = await client.post(
            "/v1/jobs", content=bad, headers={"Content-Type": "application/yaml"}
        )
        assert response.status_code == 422
        assert [f["field"] for f in response.json()["fields"]] == ["groups[0].tasks[0].image"]
        assert (await client.get("/v1/jobs")).json() == []
        scale = await client.post("/v1/jobs/shop/scale", json={"group": "web", "count": -1})
        assert scale.status_code == 422
        assert (await client.get("/v1/jobs/shop")).status_code == 404
        assert (await client.get("/v1/allocations/nope")).status_code == 404
    await manager.close()


async def test_a_group_that_fits_nowhere_waits_for_the_cluster_to_change() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    manager = make_manager(store, workers)  # no node at all
    await manager.jobs.submit(job_spec(count=5))
    for _ in range(3):
        await manager.jobs.reconcile_all(NOW)
    (stuck,) = manager.jobs.allocations()  # one tried, the others wait: not five failures
    assert (stuck.node, stuck.status_reason) == (None, "no node in datacenter dc1")
    job = manager.jobs.job("shop")  # the job says why, as a blocked evaluation in Nomad
    assert job.status is JobStatus.PENDING
    assert job.status_reason == "blocked: web: 5 of 5 not placed: no node in datacenter dc1"

    manager.nodes["n1"] = node("n1")
    manager._capacity_changed()  # a node joined
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    allocs = manager.jobs.allocations()
    assert len(allocs) == 5
    assert {a.node for a in allocs} == {"n1"}
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.job("shop").status_reason == "5 allocations running"
    await manager.close()


def test_a_running_job_with_a_blocked_group_says_both() -> None:
    spec = job_spec(count=3)
    placed = [
        Allocation(job="shop", group="web", index=i, version=1, group_hash="h", node="n1")
        for i in range(2)
    ]
    stuck = Allocation(
        job="shop", group="web", index=2, version=1, group_hash="h", placement={"node": None}
    )
    stuck.status_reason = "no node has 0.5 CPU free"
    running = (JobStatus.RUNNING, "2 allocations running")
    assert blocked_status(spec, *running, [*placed, stuck]) == (
        JobStatus.RUNNING,
        "2 allocations running; blocked: web: 1 of 3 not placed: no node has 0.5 CPU free",
    )
    assert blocked_status(spec, *running, placed) == running  # nothing waits
    dead = (JobStatus.DEAD, "stopped")
    assert blocked_status(spec, *dead, [*placed, stuck]) == dead


async def test_a_large_count_is_placed_over_several_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cube.manager.job_applier.MAX_PLACEMENTS_PER_PASS", 4)
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec(count=6))
    await manager.jobs.reconcile_all(NOW)
    assert len(manager.jobs.allocations()) == 4
    assert manager.jobs.loop._wake.is_set()  # the next pass goes on at once
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert len(manager.jobs.allocations()) == 6
    await manager.close()


async def test_a_drained_nodes_allocations_are_replaced_elsewhere() -> None:
    _, _, manager = await submitted(job_spec(count=2), "n1", "n2")
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    drained = next(a for a in manager.jobs.allocations() if a.node == "n2")

    await manager.drain("n2")
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    old = manager.jobs.allocation(drained.id)
    assert (old.desired, old.desired_reason) == (AllocDesired.STOP, "node n2 is draining")
    new = manager.jobs.allocation(old.replaced_by or "")
    assert (new.index, new.node) == (drained.index, "n1")
    await manager.jobs.reconcile_all(NOW)  # its tasks ended: the migrated allocation is Complete
    assert manager.jobs.allocation(drained.id).status is AllocStatus.COMPLETE
    await manager.close()


def test_a_workers_datacenter_is_a_label_that_another_label_may_not_contradict() -> None:
    def options(labels: tuple[str, ...], datacenter: str | None) -> NodeOptions:
        return NodeOptions(None, None, None, labels, (), datacenter)

    assert options((), None).node_labels() == {"datacenter": "dc1"}
    assert options(("zone=a",), "eu1").node_labels() == {"zone": "a", "datacenter": "eu1"}
    assert options(("datacenter=eu1",), None).node_labels() == {"datacenter": "eu1"}
    with pytest.raises(click.BadParameter, match="contradicts --datacenter"):
        options(("datacenter=us1",), "eu1").node_labels()


async def test_a_job_may_not_be_named_like_a_route() -> None:
    manager = make_manager(MemoryStore(), FakeWorkers())
    transport = httpx.ASGITransport(app=create_app(manager))
    body = {"job": "plan", "groups": [{"name": "g", "tasks": [{"name": "a", "image": "b"}]}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        response = await client.post("/v1/jobs", json=body)
        assert response.status_code == 422
        assert [f["field"] for f in response.json()["fields"]] == ["job"]
        wrong = await client.get("/v1/jobs/plan")
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    await manager.close()


@pytest.mark.parametrize(
    "command",
    [
        ["job"],
        ["job", "run"],
        ["job", "plan"],
        ["job", "status"],
        ["job", "stop"],
        ["job", "scale"],
        ["job", "history"],
        ["alloc"],
        ["alloc", "status"],
        ["worker"],
    ],
)
def test_every_job_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    if command == ["worker"]:
        assert "--datacenter" in result.output


async def test_a_new_submit_is_pending_until_a_pass_judges_it() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec(count=0))
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.job("shop").status is JobStatus.RUNNING  # scaled to 0: where it should be
    await manager.jobs.stop("shop")
    assert manager.jobs.job("shop").status is JobStatus.DEAD
    job, created = await manager.jobs.submit(job_spec(count=0))  # the same file starts it again
    assert created
    assert (job.status, job.stopped) == (JobStatus.PENDING, False)
    await manager.close()


async def test_job_routes_need_the_cluster_token() -> None:
    user, join = "u" * 32, "j" * 32
    manager = make_manager(MemoryStore(), FakeWorkers())
    app = create_app(manager, authenticator=Authenticator({Role.USER: [user], Role.JOIN: [join]}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        for method, path in [
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("POST", "/v1/jobs/plan"),
            ("GET", "/v1/jobs/shop"),
            ("DELETE", "/v1/jobs/shop"),
            ("POST", "/v1/jobs/shop/scale"),
            ("GET", "/v1/allocations"),
        ]:
            assert (await client.request(method, path)).status_code == 401, path
            joining = {"Authorization": f"Bearer {join}"}
            assert (await client.request(method, path, headers=joining)).status_code == 403, path
        answer = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {user}"})
        assert answer.status_code == 200
    await manager.close()


def sized_job(cpu: float) -> JobSpec:
    tasks = [{"name": "api", "image": "busybox", "resources": {"cpu": cpu, "memory": "16MiB"}}]
    return parse_job({"job": "shop", "groups": [{"name": "web", "count": 3, "tasks": tasks}]})


async def test_a_plan_counts_what_an_update_frees_where_the_old_allocation_stops() -> None:
    """A full node: ``cube job plan`` of a smaller version said "update web[0]: none fits"
    (exit 1), though ``cube job run`` of it went through: the update stops, then starts."""
    _, _, manager = await submitted(sized_job(1.2), "n1")  # 4 CPU: 3 x 1.2 leave 0.4
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.job("shop").status is JobStatus.RUNNING

    plan, decisions = manager.jobs.plan(sized_job(1.0))
    (update,) = plan.update  # one at a time
    assert decisions[f"web[{update.index}]"].node == "n1", decisions
    plan, decisions = manager.jobs.plan(sized_job(1.7))  # more than 1.2 + 0.4: still none
    assert decisions[f"web[{plan.update[0].index}]"].node is None
    await manager.close()


async def test_a_stopped_job_is_not_scaled_which_would_start_it_again() -> None:
    _, _, manager = await submitted(job_spec(count=1), "n1")
    await manager.jobs.stop("shop")
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        refused = await client.post("/v1/jobs/shop/scale", json={"group": "web", "count": 3})
    assert refused.status_code == 409
    assert "job shop is stopped: start it again with cube job run FILE" in refused.text
    job = manager.jobs.job("shop")
    assert (job.stopped, job.version) == (True, 1)
    await manager.close()


def system_job_spec() -> JobSpec:
    tasks = [{"name": "api", "image": "busybox"}, {"name": "side", "image": "busybox"}]
    return parse_job({"job": "shop", "type": "system", "groups": [{"name": "web", "tasks": tasks}]})


@pytest.mark.parametrize(
    ("make_spec", "instead"),
    [
        (lambda: job_spec(count=1), "run fewer copies (cube job scale shop web N)"),
        # A system job has no count (scale refuses it): the refusal must not send you there.
        (system_job_spec, "keep it off n1 with a constraint in the job's file"),
    ],
)
async def test_one_task_of_an_allocation_that_runs_is_not_stopped_alone(
    make_spec: Any, instead: str
) -> None:
    """``cube stop 1952438f1afa-api`` ended the api while its allocation stayed Running,
    "every task runs", the proxy beside it without its api; nothing replaced it."""
    _, workers, manager = await submitted(make_spec(), "n1")
    run_all(manager)
    (a,) = manager.jobs.allocations()
    transport = httpx.ASGITransport(app=create_app(manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        refused = await client.delete(f"/v1/tasks/{a.id[:12]}-api")
        assert refused.status_code == 409
        assert f"{a.id[:12]}-api is part of allocation shop.web[0]" in refused.text
        assert refused.json()["message"].endswith(f"(cube job stop shop) or {instead}")
        assert manager.tasks[f"{a.id}-api"].desired is DesiredState.RUN
        assert workers.stopped == []

        await manager.jobs.stop("shop")  # the allocation is to stop: its tasks may be stopped too
        stopped = await client.delete(f"/v1/tasks/{a.id}-api")
        assert stopped.status_code == 200
    assert manager.tasks[f"{a.id}-api"].desired is DesiredState.STOP
    await manager.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("scale", "web was scaled to 1"),
        ("stop", "the job was stopped"),
        ("update", "version 2 changes what {name} runs (was version 1)"),
    ],
)
async def test_tasks_the_job_service_stops_carry_the_reason_to_their_node_and_events(
    change: str, reason: str
) -> None:
    _, workers, manager = await submitted(job_spec(count=2), "n1", "n2")
    run_all(manager)
    await manager.jobs.reconcile_all(NOW)
    before = {a.id for a in manager.jobs.allocations()}
    if change == "scale":
        await manager.jobs.scale("shop", "web", 1)
    elif change == "stop":
        await manager.jobs.stop("shop")
    else:
        changed = job_spec(count=2).model_dump(mode="json")
        changed["groups"][0]["tasks"][0]["image"] = "busybox:1.36"
        await manager.jobs.submit(JobSpec.model_validate(changed))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    stopped = [
        a for a in manager.jobs.allocations() if a.id in before and a.desired is AllocDesired.STOP
    ]
    assert stopped
    for alloc in stopped:
        why = reason.format(name=alloc.name)
        for t in alloc.tasks.values():
            assert workers.stop_reasons[t.id] == why  # what the node is told
            task = manager.tasks[t.id]
            assert (task.state, task.reason, task.desired_reason) == (State.COMPLETED, why, why)
            events = await manager.events(t.id)
            assert events[-1].reason == why  # and what its history says
            assert not [e for e in events if "by user" in e.reason]
    await manager.close()
