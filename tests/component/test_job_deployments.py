"""Deployments in an in-process manager, without Docker: the applier saves what the pure
decisions say, rolls, reverts, promotes, and resumes after a restart.

The cluster is tests/support/deploying.py's: nodes are tests/support/fake_nodes.py's
FakeWorkers; tasks are marked Running as a node would report them; each pass runs at a
clock the test chooses.
"""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner

from cube.cli.main import cli
from cube.errors import Conflict, NotFound
from cube.job.deployment import DeploymentStatus
from cube.job.model import AllocDesired
from cube.job.spec import JobSpec
from cube.manager.api import create_app
from tests.support.deploying import Cluster, at, deployed, spec


async def test_the_first_version_s_deployment_succeeds_once_every_allocation_is_healthy() -> None:
    c = Cluster()
    await c.manager.jobs.submit(spec())
    await c.passes(0, 0.5)
    d = c.deployment()
    assert (d.status, d.version, d.from_version) == (DeploymentStatus.RUNNING, 1, None)
    await c.passes(1.4)  # ready since 0.5: min_healthy_time is 1s
    assert c.deployment().status is DeploymentStatus.RUNNING
    await c.passes(1.5)
    d = c.deployment()
    assert (d.status, d.status_reason) == (
        DeploymentStatus.SUCCESSFUL,
        "all 3 allocations of version 1 healthy",
    )
    assert all(a.healthy and a.deployment == d.id for a in c.allocs())
    # The store has it as the manager does.
    assert c.store.find_deployment(d.id) == d
    await c.manager.close()


async def test_the_pass_asks_to_be_woken_when_min_healthy_time_elapses() -> None:
    """Not at the next report or safety pass: the job loop sleeps until the earliest
    moment an allocation may be deemed healthy, and the pass then judges it so."""
    c = Cluster()
    await c.manager.jobs.submit(spec())
    await c.passes(0, 0.5)  # placed, then reported running: ready since 0.5
    assert c.manager.jobs.changes.wake_at() == at(1.5)
    await c.passes(1.5, run=False)
    assert c.deployment().status is DeploymentStatus.SUCCESSFUL
    # Nothing left to wait for.
    assert c.manager.jobs.changes.wake_at() is None
    await c.manager.close()


@pytest.mark.parametrize("order", ["stop-first", "start-first"])
async def test_a_rolling_update_replaces_one_at_a_time_each_once_the_previous_is_healthy(
    order: str,
) -> None:
    c = await deployed()
    await c.manager.jobs.submit(spec("busybox:2", order=order))
    t = 2.0
    await c.passes(t)
    for step in range(3):
        new = c.live(2)
        assert len(new) == step + 1, f"step {step}: one more at a time"
        assert len(c.live()) == (3 if order == "stop-first" else 4)
        c.stop_reported()
        await c.passes(t + 0.1, t + 1.2)  # running, then healthy: the next one goes
        t += 1.5
        await c.passes(t)
    c.stop_reported()
    await c.passes(t + 0.1)
    assert len(c.live(2)) == 3
    assert c.live(1) == []
    d = c.deployment()
    assert (d.status, d.version, d.from_version) == (DeploymentStatus.SUCCESSFUL, 2, 1)
    await c.manager.close()


async def test_a_bad_version_fails_at_healthy_deadline_and_auto_revert_keeps_every_old_one() -> (
    None
):
    c = await deployed(order="start-first", auto_revert=True)
    old = {a.id for a in c.allocs()}
    await c.manager.jobs.submit(spec("busybox:bad", order="start-first", auto_revert=True))
    await c.passes(2, run=False)  # placed; its tasks never run
    (bad,) = c.live(2)
    assert len(c.live(1)) == 3
    await c.passes(6.9, run=False)
    assert c.deployment().version == 2
    await c.passes(7.0, run=False)  # healthy_deadline 5s after its placement at 2

    job = c.manager.jobs.job("shop")
    assert job.version == 3
    deployments = c.manager.jobs.deployments.of_job("shop")
    assert [(d.version, d.status) for d in deployments] == [
        (1, DeploymentStatus.SUCCESSFUL),
        (2, DeploymentStatus.ROLLED_BACK),
        (3, DeploymentStatus.RUNNING),
    ]
    assert deployments[1].status_reason == (
        "shop.web[0] was not healthy within healthy_deadline 5s; rolled back to version 1"
    )
    back = deployments[2]
    assert back.revert
    assert back.groups["web"].desired_canaries == 0
    # The old ones never stopped, and run version 3 now; the bad one stops.
    assert {a.id for a in c.live()} == old
    assert {a.version for a in c.live()} == {3}
    assert c.manager.jobs.allocation(bad.id).desired is AllocDesired.STOP
    await c.passes(7.5)
    assert c.deployment().status is DeploymentStatus.SUCCESSFUL
    assert c.healthy_stopped == set()
    await c.manager.close()


async def test_without_auto_revert_a_failed_deployment_leaves_what_runs() -> None:
    c = await deployed(order="start-first")
    await c.manager.jobs.submit(spec("busybox:bad", order="start-first"))
    await c.passes(2, run=False)
    await c.passes(7, 10, run=False)
    d = c.deployment()
    assert (d.version, d.status) == (2, DeploymentStatus.FAILED)
    assert len(c.live(1)) == 3  # nothing more replaced, nothing old stopped
    assert c.healthy_stopped == set()
    # By hand: back to the last good version.
    job = await c.manager.jobs.deployment_moves.revert("shop", None, at(11))
    assert (job.version, job.status_reason) == (3, "version 3: back to version 1")
    await c.passes(11, 12.5)
    assert c.deployment().status is DeploymentStatus.SUCCESSFUL
    assert len(c.live(3)) == 3
    assert c.healthy_stopped == set()
    await c.manager.close()


async def test_canaries_wait_for_promotion_then_the_rest_rolls() -> None:
    c = await deployed()
    await c.manager.jobs.submit(spec("busybox:2", canary=1, order="start-first", max_parallel=2))
    await c.passes(2, 2.1, 3.2)
    (canary,) = c.live(2)
    assert canary.canary
    d = c.deployment()
    assert d.status is DeploymentStatus.WAITING
    assert len(c.live(1)) == 3
    await c.passes(10, 30)  # waiting is no progress to miss: nothing moves
    assert c.deployment().status is DeploymentStatus.WAITING
    assert len(c.live()) == 4

    await c.manager.jobs.deployment_moves.promote("shop", at(31))
    await c.passes(31, 31.1, 32.2, 32.3, 33.4, 34)
    c.stop_reported()
    await c.passes(34.1)
    assert len(c.live(2)) == 3
    assert c.live(1) == []
    assert c.manager.jobs.allocation(canary.id).desired is AllocDesired.RUN
    assert c.deployment().status is DeploymentStatus.SUCCESSFUL
    await c.manager.close()


async def test_failing_a_canary_deployment_stops_the_canary_and_leaves_the_old_ones() -> None:
    c = await deployed()
    await c.manager.jobs.submit(spec("busybox:2", canary=1))
    await c.passes(2, 2.1, 3.2)
    (canary,) = c.live(2)
    old = {a.id for a in c.live(1)}

    failed = await c.manager.jobs.deployment_moves.fail("shop", at(4))
    assert failed.status is DeploymentStatus.ROLLED_BACK
    assert failed.status_reason == "failed by hand (cube job fail); rolled back to version 1"
    await c.passes(4)
    assert c.manager.jobs.allocation(canary.id).desired is AllocDesired.STOP
    assert {a.id for a in c.live()} == old
    assert not {alloc for alloc, _ in c.healthy_stopped} & old
    await c.manager.close()


async def test_promote_fail_and_revert_refuse_what_makes_no_sense() -> None:
    c = await deployed()
    moves = c.manager.jobs.deployment_moves
    with pytest.raises(Conflict, match="has no deployment running to promote"):
        await moves.promote("shop", at(3))
    with pytest.raises(Conflict, match="successful"):
        await moves.fail("shop", at(3))
    with pytest.raises(Conflict, match="no earlier version that deployed successfully"):
        await moves.revert("shop", None, at(3))
    with pytest.raises(Conflict, match="version 1 of job shop is what version 1 runs already"):
        await moves.revert("shop", 1, at(3))
    with pytest.raises(NotFound, match="job shop has no version 7"):
        await moves.revert("shop", 7, at(3))
    with pytest.raises(NotFound, match="job ghost not found"):
        await moves.promote("ghost", at(3))
    await c.manager.close()


async def test_a_restarted_manager_resumes_the_deployment_where_it_was() -> None:
    c = await deployed()
    await c.manager.jobs.submit(spec("busybox:2", order="start-first"))
    await c.passes(2, 2.1, 3.2, 3.3)  # the first replaced, the second placed
    d = c.deployment()
    before = {a.id: (a.version, a.desired, a.healthy) for a in c.allocs()}
    await c.manager.close()

    again = Cluster(c.store, c.workers)
    assert again.deployment() == d
    assert {a.id: (a.version, a.desired, a.healthy) for a in again.allocs()} == before
    sent = len(again.workers.sent)
    await again.passes(3.4, run=False)
    assert len(again.workers.sent) == sent  # nothing placed twice
    await again.passes(3.5, 4.6, 4.7, 5.8, 5.9)
    again.stop_reported()
    await again.passes(6)
    assert len(again.live(2)) == 3
    assert again.live(1) == []
    assert again.deployment().status is DeploymentStatus.SUCCESSFUL
    assert len({a.index for a in again.live()}) == 3
    await again.manager.close()


async def test_a_newer_version_cancels_the_running_deployment() -> None:
    c = await deployed()
    await c.manager.jobs.submit(spec("busybox:2"))
    await c.passes(2)
    await c.manager.jobs.submit(spec("busybox:3"))
    await c.passes(2.5)
    _, second, third = c.manager.jobs.deployments.of_job("shop")
    assert (second.status, second.status_reason) == (
        DeploymentStatus.CANCELLED,
        "version 3 replaced it",
    )
    assert (third.version, third.from_version) == (3, 2)
    await c.manager.close()


async def test_the_deployment_routes_answer_and_refuse_naming_the_field() -> None:
    c = await deployed()
    await c.manager.jobs.submit(spec("busybox:2", canary=1))
    await c.passes(2, 2.1, 3.2)
    transport = httpx.ASGITransport(app=create_app(c.manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        listed = (await client.get("/v1/jobs/shop/deployments")).json()
        assert [(d["version"], d["status"]) for d in listed] == [
            (1, "successful"),
            (2, "waiting-for-promotion"),
        ]
        one = await client.get(f"/v1/deployments/{listed[1]['id'][:8]}")  # a prefix works
        assert one.json()["id"] == listed[1]["id"]
        assert (await client.get("/v1/deployments/nope")).status_code == 404
        detail = (await client.get("/v1/jobs/shop")).json()
        assert detail["deployment"]["id"] == listed[1]["id"]

        history = (await client.get("/v1/jobs/shop/history")).json()
        assert [h["changes"] for h in history] == [
            [],
            ["~ groups[0].tasks[0].image: busybox:1 -> busybox:2", "+ update.canary: 1"],
        ]
        assert [h["deployment"] for h in history] == ["successful", "waiting-for-promotion"]
        assert [h["groups"] for h in history] == [{"web": 3}, {"web": 3}]

        bad = await client.post("/v1/jobs/shop/revert", json={"version": 0})
        assert bad.status_code == 422
        assert [f["field"] for f in bad.json()["fields"]] == ["version"]
        unknown = await client.post("/v1/jobs/shop/revert", json={"version": 9})
        assert unknown.status_code == 404
        promoted = await client.post("/v1/jobs/shop/promote")
        assert (promoted.status_code, promoted.json()["status"]) == (200, "running")
        again = await client.post("/v1/jobs/shop/promote")
        assert again.status_code == 409
        assert "no canary to promote" in again.json()["message"]

        paused = await client.post("/v1/jobs/shop/pause")
        assert (paused.status_code, paused.json()["status"]) == (200, "paused")
        assert (await client.post("/v1/jobs/shop/pause")).status_code == 409
        resumed = await client.post("/v1/jobs/shop/resume")
        assert (resumed.status_code, resumed.json()["status"]) == (200, "running")
        assert (await client.post("/v1/jobs/shop/resume")).status_code == 409

        back = await client.post("/v1/jobs/shop/revert", json={})
        assert (back.status_code, back.json()["version"]) == (200, 3)
        failed = await client.post("/v1/jobs/shop/fail")
        assert failed.status_code == 200  # the revert's own deployment, failed by hand
        assert (await client.post("/v1/jobs/ghost/fail")).status_code == 404
    await c.manager.close()


def test_the_deployment_commands_have_help_with_an_example() -> None:
    for command in ("promote", "pause", "resume", "fail", "revert", "history", "deployments"):
        result = CliRunner().invoke(cli, ["job", command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output


@pytest.mark.parametrize("given", ["-1", "0", "abc", "2.5"])
def test_a_revert_to_a_version_that_is_no_number_is_one_line_naming_it(given: str) -> None:
    """``cube job revert web -1`` said "No such option '-1'", and ``abc`` "'abc' is not a
    valid integer range"; no call reaches the manager."""

    def no_call(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.url}")

    result = CliRunner().invoke(
        cli, ["job", "revert", "web", given], obj=httpx.MockTransport(no_call)
    )
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "Error: version: must be a version number as `cube job history` lists them (1, 2, ...),"
        f" not {given!r}\n"
    )


async def test_a_dry_run_shows_the_canary_a_submit_would_start_and_changes_nothing() -> None:
    c = await deployed()
    plan, decisions = c.manager.jobs.plan(spec("busybox:2", canary=1, order="start-first"))
    assert [(p.index, p.canary) for p in plan.place] == [(0, True)]
    assert decisions["web[0]"].node is not None
    assert not plan.update
    assert not plan.stop
    assert len(c.manager.jobs.deployments.of_job("shop")) == 1  # nothing saved
    await c.manager.close()


async def test_a_stopped_job_started_again_is_deployed_again() -> None:
    c = await deployed()
    await c.manager.jobs.stop("shop")
    await c.passes(2)
    stopped = c.deployment()
    assert c.manager.jobs.deployments.of_job("shop")[-1].status is DeploymentStatus.SUCCESSFUL
    c.stop_reported()
    _, created = await c.manager.jobs.submit(spec())  # the same file: no new version
    assert created
    await c.passes(3, 3.1, 4.2)
    again = c.deployment()
    assert again.id != stopped.id
    assert (again.version, again.status) == (1, DeploymentStatus.SUCCESSFUL)
    await c.manager.close()


async def test_a_system_job_s_first_deployment_waits_for_one_healthy_allocation_per_node() -> None:
    """Its allocations do not exist yet when its first pass looks at the deployment: one
    per eligible node is wanted all the same, not "all 0 allocations healthy" at once."""
    c = Cluster()
    system = spec().model_dump(mode="json", exclude_defaults=True)
    system["type"] = "system"
    del system["groups"][0]["count"]
    await c.manager.jobs.submit(JobSpec.model_validate(system))
    await c.passes(0)
    d = c.deployment()
    assert (d.status, d.groups["web"].desired) == (DeploymentStatus.RUNNING, 3)
    await c.passes(0.5, 1.5)
    d = c.deployment()
    assert (d.status, d.status_reason) == (
        DeploymentStatus.SUCCESSFUL,
        "all 3 allocations of version 1 healthy",
    )
    await c.manager.close()


async def test_a_plan_names_the_slot_and_node_of_each_allocation_it_keeps() -> None:
    """``cube job plan`` of an unchanged job showed ``keep  -  a1b2c3  -``: each running
    allocation now with its slot (web[0]) and node."""
    c = await deployed()
    transport = httpx.ASGITransport(app=create_app(c.manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        body = spec().model_dump_json()
        answer = await client.post("/v1/jobs/plan", content=body)
    assert answer.status_code == 200, answer.text
    kept = {
        (e["group"], e["index"], e["node"], e["alloc"])
        for e in answer.json()["entries"]
        if e["action"] == "keep"
    }
    assert kept == {(a.group, a.index, a.node, a.id) for a in c.live()}
    assert {node for _, _, node, _ in kept} == {"n1", "n2", "n3"}
    await c.manager.close()
