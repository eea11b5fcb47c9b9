"""The manager's job service, without Docker: its passes in-process.

(Its pure parts, an allocation's status from its tasks, task IDs, which nodes count as bad,
the CLI's judgement of a job's progress, are tests/unit/test_job_status.py's.) The applier
runs in an in-process manager whose nodes are a fake WorkerClient that records what it is sent;
each test drives passes with :meth:`JobService.reconcile_all` and the clock it chooses.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from cube.auth import Authenticator, Role
from cube.cli.agent_options import NodeOptions
from cube.cli.main import cli
from cube.job.blocked import PlacementFailure, blocked_status
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobStatus,
)
from cube.job.parse import parse_job
from cube.job.spec import JobSpec
from cube.manager.api import create_app
from cube.manager.pass_views import PassViews
from cube.store.memory import MemoryStore
from cube.task.model import DesiredState
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

# --- the applier, in-process --------------------------------------------------------------------


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


async def test_no_node_in_the_jobs_datacenters_places_nothing_and_says_why() -> None:
    store, workers = MemoryStore(), FakeWorkers()
    store.save_node(node("n1", dc="dc1"))
    manager = make_manager(store, workers)
    await manager.jobs.submit(job_spec(count=1).model_copy(update={"datacenters": ["eu1"]}))
    await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.allocations() == []
    assert store.list_allocations() == []
    (failure,) = manager.jobs.failures("shop").values()
    assert (failure.count, failure.reason, failure.filtered) == (
        1,
        "no node in datacenter eu1",
        {"datacenter": 1},  # n1, in dc1
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


async def test_a_group_that_fits_nowhere_waits_for_the_cluster_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, workers = MemoryStore(), FakeWorkers()
    manager = make_manager(store, workers)  # no node at all
    await manager.jobs.submit(job_spec(count=5))
    tried: list[str] = []
    choose = manager.jobs.placer.choose

    def counted(spec: JobSpec, place: Any, views: PassViews, **options: Any) -> Any:
        tried.append(place.group)
        return choose(spec, place, views, **options)

    monkeypatch.setattr(manager.jobs.placer, "choose", counted)
    for _ in range(3):
        await manager.jobs.reconcile_all(NOW)
    assert manager.jobs.allocations() == []  # nothing recorded, as in Nomad
    assert store.list_allocations() == []
    # One tried, the others wait for the cluster to change: not five failures a pass.
    assert tried == ["web"]
    assert manager.jobs.failures("shop")["web"].count == 5
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
    stuck = {"web": PlacementFailure(count=1, reason="no node has 0.5 CPU free")}
    running = (JobStatus.RUNNING, "2 allocations running")
    assert blocked_status(spec, *running, placed, stuck) == (
        JobStatus.RUNNING,
        "2 allocations running; blocked: web: 1 of 3 not placed: no node has 0.5 CPU free",
    )
    assert blocked_status(spec, *running, placed, {}) == running  # nothing waits
    dead = (JobStatus.DEAD, "stopped")
    assert blocked_status(spec, *dead, placed, stuck) == dead


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
