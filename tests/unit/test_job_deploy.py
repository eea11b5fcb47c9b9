"""Deployments as pure decisions: the rolling in the reconciler (cube.job.rollout), the
allocation health verdict and the deployment's status (cube.job.deploy).

Table tests with the clock passed in, in the manner of test_job_reconcile: each builds the
records an applier would have written and checks what the plan or the verdict says.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from cube.errors import Conflict, InvalidSpec
from cube.job import deploy
from cube.job.deployment import Deployment, DeploymentStatus, GroupDeployment
from cube.job.model import Allocation, AllocDesired, AllocStatus, Job, JobVersion
from cube.job.parse import parse_job, parse_job_text
from cube.job.plan import Plan
from cube.job.reconcile import reconcile
from cube.job.spec import JobSpec, UpdateOrder, UpdatePolicy, update_policy
from cube.node import NodeState
from cube.task.model import Health, Task
from cube.task.spec import TaskSpec
from cube.task.state import State
from tests.support.job_records import T0, N, alloc, at, shape
from tests.support.paths import README
from tests.support.rollouts import job_spec


def version(number: int, image: str = "cube-busybox:1", **update: Any) -> JobVersion:
    count = update.pop("count", 3)
    return JobVersion.of(job_spec(image, count, **update), number, now=T0)


def old(v: JobVersion, count: int = 3, **fields: Any) -> list[Allocation]:
    """``count`` healthy running allocations of ``v``: a0, a1, ..."""
    return [alloc(v, i, f"n{i + 1}", id=f"a{i}", healthy=True, **fields) for i in range(count)]


def deployment(v: JobVersion, **fields: Any) -> Deployment:
    fields.setdefault("groups", {"web": GroupDeployment(desired=3, promoted=True)})
    fields.setdefault("id", "d2")
    return Deployment(job="shop", version=v.number, **fields)


def plan_of(
    v: JobVersion, allocs: list[Allocation], d: Deployment | None, now: datetime = T0
) -> Plan:
    nodes = [N("n1"), N("n2"), N("n3"), N("n4")]
    return reconcile(Job(id="shop", version=v.number), v, allocs, nodes, now, deployment=d)


def new(v: JobVersion, index: int, replaces: str, **fields: Any) -> Allocation:
    """A replacement of ``replaces`` at version ``v``, placed by deployment d2."""
    fields.setdefault("status", AllocStatus.PENDING)
    return alloc(v, index, "n4", id=f"b{index}", replaces=replaces, deployment="d2", **fields)


def superseded(a: Allocation, by: str) -> Allocation:
    return a.model_copy(update={"replaced_by": by})


# --- rolling: max_parallel, both orders ----------------------------------------------------


@pytest.mark.parametrize(
    ("parallel", "updated"), [(1, ["a0"]), (2, ["a0", "a1"]), (5, ["a0", "a1", "a2"])]
)
def test_max_parallel_allocations_are_replaced_at_once(parallel: int, updated: list[str]) -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", max_parallel=parallel)
    plan = plan_of(v2, old(v1), deployment(v2))

    assert [u.alloc for u in plan.update] == updated
    assert not any(u.start_first for u in plan.update)
    waiting = [k.reason for k in plan.keep]
    assert all(r.startswith("waits to be updated to version 2") for r in waiting)


def test_the_next_batch_waits_until_the_previous_one_is_healthy_not_only_running() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", max_parallel=2)
    a0, a1, a2 = old(v1)
    stopped = [
        a.model_copy(update={"desired": AllocDesired.STOP, "status": AllocStatus.COMPLETE})
        for a in (superseded(a0, "b0"), superseded(a1, "b1"))
    ]
    running = [new(v2, 0, "a0", status=AllocStatus.RUNNING), new(v2, 1, "a1")]
    d = deployment(v2)

    # Running is not enough: b0 is not healthy yet, so two are still in flight.
    assert shape(plan_of(v2, [*stopped, *running, a2], d)) == {"keep": ["b0", "b1", "a2"]}
    # One of the two healthy: one more may go.
    one = [running[0].model_copy(update={"healthy": True}), running[1]]
    assert shape(plan_of(v2, [*stopped, *one, a2], d))["update"] == ["a2"]


def test_stop_first_counts_an_old_allocation_still_stopping_as_in_flight() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    a0, a1, a2 = old(v1)
    stopping = superseded(a0, "b0").model_copy(update={"desired": AllocDesired.STOP})
    healthy = new(v2, 0, "a0", status=AllocStatus.RUNNING, healthy=True)

    assert "update" not in shape(plan_of(v2, [stopping, healthy, a1, a2], deployment(v2)))


def test_start_first_starts_the_replacement_beside_the_old_one() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", order="start-first")
    plan = plan_of(v2, old(v1), deployment(v2))

    assert [(u.alloc, u.start_first) for u in plan.update] == [("a0", True)]
    assert not plan.stop


def test_start_first_stops_the_old_one_only_once_its_replacement_is_healthy() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", order="start-first")
    a0, a1, a2 = old(v1)
    starting = new(v2, 0, "a0", status=AllocStatus.RUNNING)
    d = deployment(v2)

    plan = plan_of(v2, [superseded(a0, "b0"), starting, a1, a2], d)
    assert not plan.stop
    assert not plan.update
    assert "a0" in shape(plan)["keep"]

    healthy = starting.model_copy(update={"healthy": True})
    plan = plan_of(v2, [superseded(a0, "b0"), healthy, a1, a2], d)
    assert [s.alloc for s in plan.stop] == ["a0"]
    assert plan.stop[0].reason == "its replacement b0 is healthy"
    # start-first does not wait for the old one to stop before the next batch.
    assert [u.alloc for u in plan.update] == ["a1"]


def test_start_first_does_not_count_an_old_allocation_still_stopping_as_in_flight() -> None:
    """The pass after the one that stopped a0: a0 still stopping holds nothing up, as
    its slot is served by its healthy replacement (stop-first: see the test above)."""
    v1, v2 = version(1), version(2, "cube-busybox:2", order="start-first")
    a0, a1, a2 = old(v1)
    stopping = superseded(a0, "b0").model_copy(update={"desired": AllocDesired.STOP})
    healthy = new(v2, 0, "a0", status=AllocStatus.RUNNING, healthy=True)

    plan = plan_of(v2, [stopping, healthy, a1, a2], deployment(v2))
    assert [(u.alloc, u.start_first) for u in plan.update] == [("a1", True)]


@pytest.mark.parametrize("nodes", [[N("n2"), N("n3"), N("n4")], [N("n1", NodeState.DOWN), N("n4")]])
def test_a_superseded_allocation_on_a_lost_node_is_marked_lost(nodes: list[N]) -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", order="start-first")
    a0, a1, a2 = old(v1)
    starting = new(v2, 0, "a0", status=AllocStatus.RUNNING)
    allocs = [superseded(a0, "b0"), starting, a1, a2]
    plan = reconcile(Job(id="shop", version=2), v2, allocs, nodes, T0, deployment=deployment(v2))
    assert ("a0", True) in shape(plan)["stop"]


@pytest.mark.parametrize(
    "status", [DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK, DeploymentStatus.CANCELLED]
)
def test_nothing_is_replaced_once_the_deployment_is_over(status: DeploymentStatus) -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", max_parallel=3)
    plan = plan_of(v2, old(v1), deployment(v2, status=status))

    assert shape(plan) == {"keep": ["a0", "a1", "a2"]}
    assert plan.keep[0].reason.startswith("not updated to version 2: its deployment")


def test_a_failed_start_first_update_keeps_the_old_allocation_running() -> None:
    """nomad#6864: the replacement never became healthy; the old one must not be stopped."""
    v1, v2 = version(1), version(2, "cube-busybox:2", order="start-first")
    a0, a1, a2 = old(v1)
    bad = new(v2, 0, "a0", status=AllocStatus.RUNNING, healthy=False)
    d = deployment(v2, status=DeploymentStatus.FAILED)

    plan = plan_of(v2, [superseded(a0, "b0"), bad, a1, a2], d)
    assert not plan.stop
    assert not plan.update


# --- revert --------------------------------------------------------------------------------


def test_a_revert_keeps_every_old_allocation_and_takes_slots_back_from_the_new_ones() -> None:
    """Version 3 is version 1's spec again: the old allocations are moved to it in place
    (never stopped), a superseded one takes its slot back, and only new ones stop."""
    v1 = version(1)
    v2 = version(2, "cube-busybox:2", order="start-first")
    v3 = JobVersion.of(v1.spec, 3, now=T0)
    a0, a1, a2 = old(v1)
    bad = new(v2, 0, "a0", status=AllocStatus.RUNNING, healthy=False)
    d3 = deployment(v3, id="d3", revert=True)

    plan = plan_of(v3, [superseded(a0, "b0"), bad, a1, a2], d3)
    assert [(r.alloc, r.stop) for r in plan.reclaim] == [("a0", "b0")]
    assert sorted(i.alloc for i in plan.in_place) == ["a1", "a2"]
    assert not plan.stop
    assert not plan.update
    assert not plan.place


def test_a_revert_after_stop_first_replaces_only_the_new_allocations() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", max_parallel=2)
    v3 = JobVersion.of(v1.spec, 3, now=T0)
    _, _, a2 = old(v1)
    bad = [new(v2, i, f"a{i}", status=AllocStatus.RUNNING, healthy=False) for i in (0, 1)]
    plan = plan_of(v3, [*bad, a2], deployment(v3, id="d3", revert=True))

    # One at a time, as version 1 (and so 3) says; the old one is moved, not touched.
    assert [u.alloc for u in plan.update] == ["b0"]
    assert [i.alloc for i in plan.in_place] == ["a2"]
    assert not plan.stop


def test_a_revert_deployment_has_no_canaries() -> None:
    v1 = version(1)
    v2 = version(2, "cube-busybox:2", canary=2)
    assert (
        deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
        .groups["web"]
        .desired_canaries
        == 2
    )
    back = JobVersion.of(v2.spec, 4, now=T0)  # even a spec with canaries, when reverted to
    d = deploy.new_deployment(back, old(v1), from_version=3, revert=True, now=T0)
    assert d.groups["web"].desired_canaries == 0
    assert d.groups["web"].promoted
    assert d.status_reason == "reverting"


def test_a_first_version_has_no_canaries_nothing_to_put_on_trial() -> None:
    v1 = version(1, canary=1)
    d = deploy.new_deployment(v1, [], from_version=None, revert=False, now=T0)
    assert d.groups["web"].desired_canaries == 0


def _deployed(number: int, status: DeploymentStatus) -> Deployment:
    return Deployment(job="shop", version=number, status=status)


def test_auto_revert_picks_the_newest_version_whose_deployment_succeeded() -> None:
    v1, v2, v3 = version(1), version(2, "cube-busybox:2"), version(3, "cube-busybox:3")
    v4 = version(4, "cube-busybox:4")
    deployments = [
        _deployed(1, DeploymentStatus.SUCCESSFUL),
        _deployed(2, DeploymentStatus.SUCCESSFUL),
        _deployed(3, DeploymentStatus.FAILED),
        _deployed(4, DeploymentStatus.FAILED),
    ]
    assert deploy.revert_target([v1, v2, v3, v4], deployments, v4) == v2
    assert deploy.revert_target([v1, v2], deployments[:1], v2) == v1
    assert deploy.revert_target([v1], deployments[:1], v1) is None


def test_auto_revert_skips_a_good_version_with_the_same_spec() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    v3 = JobVersion.of(v2.spec, 3, now=T0)
    deployments = [
        _deployed(1, DeploymentStatus.SUCCESSFUL),
        _deployed(2, DeploymentStatus.SUCCESSFUL),
    ]
    assert deploy.revert_target([v1, v2, v3], deployments, v3) == v1


# --- canaries ------------------------------------------------------------------------------


def canary_deployment(v: JobVersion, promoted: bool = False, **fields: Any) -> Deployment:
    groups = {"web": GroupDeployment(desired=3, desired_canaries=1, promoted=promoted)}
    return deployment(v, groups=groups, **fields)


def test_canaries_start_beside_the_old_allocations_which_wait() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", canary=1)
    plan = plan_of(v2, old(v1), canary_deployment(v2))

    assert [(p.index, p.canary, p.replaces) for p in plan.place] == [(0, True, None)]
    assert not plan.update
    assert not plan.stop
    assert {k.reason for k in plan.keep} == {"waits for the canaries of version 2 to be promoted"}


def test_a_placed_canary_is_not_placed_again_and_holds_no_slot() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", canary=1)
    canary = alloc(v2, 0, "n4", id="c0", canary=True, deployment="d2", healthy=True)
    plan = plan_of(v2, [*old(v1), canary], canary_deployment(v2))
    assert shape(plan) == {"keep": ["a0", "a1", "a2"]}


def test_a_promoted_canary_takes_over_its_slot_then_the_rest_roll() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", canary=1)
    canary = alloc(v2, 0, "n4", id="c0", canary=True, deployment="d2", healthy=True)
    plan = plan_of(v2, [*old(v1), canary], canary_deployment(v2, promoted=True))

    assert [(p.alloc, p.replaces) for p in plan.promote] == [("c0", "a0")]
    assert [u.alloc for u in plan.update] == ["a1"]  # c0 is healthy: not in flight


@pytest.mark.parametrize("status", [DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK])
def test_canaries_of_a_failed_deployment_stop_and_the_old_ones_stay(
    status: DeploymentStatus,
) -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", canary=1)
    canary = alloc(v2, 0, "n4", id="c0", canary=True, deployment="d2")
    plan = plan_of(v2, [*old(v1), canary], canary_deployment(v2, status=status))

    assert shape(plan) == {"stop": [("c0", False)], "keep": ["a0", "a1", "a2"]}


def test_canaries_of_an_earlier_deployment_stop() -> None:
    v1 = version(1)
    v3 = version(3, "cube-busybox:3", canary=1)
    stale = alloc(v1, 0, "n4", id="c0", canary=True, deployment="d1")
    plan = plan_of(v3, [*old(v1), stale], canary_deployment(v3))
    assert ("c0", False) in shape(plan)["stop"]


# --- allocation health ---------------------------------------------------------------------


def task(
    state: State = State.RUNNING, health: Health = Health.UNKNOWN, check: bool = False
) -> Task:
    spec: dict[str, Any] = {"name": "api", "image": "cube-busybox"}
    if check:
        spec["health"] = {"tcp": {"port": 80}}
    return Task(id="t", spec=TaskSpec.model_validate(spec), state=state, health=health)


@pytest.mark.parametrize(
    ("tasks", "ready"),
    [
        ({"api": task()}, True),
        ({"api": task(check=True, health=Health.HEALTHY)}, True),
        ({"api": task(check=True, health=Health.UNHEALTHY)}, False),
        ({"api": task(check=True)}, False),
        ({"api": task(State.SCHEDULED)}, False),
        ({"api": task(), "proxy": None}, False),
        ({}, False),
    ],
)
def test_an_allocation_is_ready_when_every_task_runs_and_passes_its_check(
    tasks: dict[str, Task | None], ready: bool
) -> None:
    assert deploy.is_ready(alloc(version(1), 0), tasks) is ready


def test_a_stopping_allocation_is_not_ready() -> None:
    stopping = alloc(version(1), 0, desired=AllocDesired.STOP)
    assert not deploy.is_ready(stopping, {"api": task()})


POLICY = UpdatePolicy(min_healthy_time=2.0, healthy_deadline=10.0, progress_deadline=30.0)


@pytest.mark.parametrize(
    ("ready_since", "ready", "now", "healthy", "since"),
    [
        (None, True, 1, None, 1),  # ready from now on
        (at(1), True, 2.5, None, 1),  # ready for 1.5s of 2s
        (at(1), True, 3, True, 1),  # ready for 2s: healthy
        (at(1), False, 3, None, None),  # a break starts the count again
        (None, False, 9.9, None, None),
        (None, False, 10, False, None),  # healthy_deadline after its creation
        (at(9), True, 10, False, 9),  # ready too late to count in time
    ],
)
def test_health_needs_min_healthy_time_without_a_break_within_healthy_deadline(
    ready_since: datetime | None, ready: bool, now: float, healthy: bool | None, since: float | None
) -> None:
    a = alloc(version(1), 0, ready_since=ready_since)
    mark = deploy.judge_health(a, ready, POLICY, at(now))
    assert mark.healthy is healthy
    assert mark.ready_since == (None if since is None else at(since))


def test_a_failed_allocation_is_unhealthy_at_once() -> None:
    a = alloc(version(1), 0, status=AllocStatus.FAILED)
    assert deploy.judge_health(a, False, POLICY, T0).healthy is False


@pytest.mark.parametrize("verdict", [True, False])
def test_a_verdict_stays(verdict: bool) -> None:
    a = alloc(version(1), 0, healthy=verdict)
    assert deploy.judge_health(a, not verdict, POLICY, at(100)).healthy is verdict


def test_health_is_due_at_min_healthy_time_or_the_deadline() -> None:
    a = alloc(version(1), 0)
    assert deploy.health_due(a, POLICY) == at(10)
    assert deploy.health_due(a.model_copy(update={"ready_since": at(3)}), POLICY) == at(5)
    assert deploy.health_due(a.model_copy(update={"healthy": True}), POLICY) is None


# --- the deployment's status ---------------------------------------------------------------


def test_a_deployment_succeeds_once_every_allocation_of_the_version_is_healthy() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    done = [alloc(v2, i, "n1", id=f"b{i}", healthy=True, deployment=d.id) for i in range(3)]
    stopped = [
        a.model_copy(update={"desired": AllocDesired.STOP, "status": AllocStatus.COMPLETE})
        for a in old(v1)
    ]

    result = deploy.step(d, v2.spec, [*stopped, *done], at(5))
    assert result.status is DeploymentStatus.SUCCESSFUL
    assert result.status_reason == "all 3 allocations of version 2 healthy"
    assert result.finished_at == at(5)
    assert result.groups["web"].healthy == 3


def test_a_deployment_is_not_done_while_an_old_allocation_still_runs() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    done = [alloc(v2, i, "n1", id=f"b{i}", healthy=True, deployment=d.id) for i in range(3)]
    stopping = superseded(old(v1)[0], "b0").model_copy(update={"desired": AllocDesired.STOP})

    result = deploy.step(d, v2.spec, [stopping, *done], at(5))
    assert result.status is DeploymentStatus.RUNNING
    assert result.status_reason == "web: 3 of 3 healthy"


def test_an_unhealthy_allocation_fails_the_deployment_naming_it() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    bad = new(v2, 0, "a0", healthy=False).model_copy(update={"deployment": d.id})

    result = deploy.step(d, v2.spec, [*old(v1), bad], at(10))
    assert result.status is DeploymentStatus.FAILED
    assert result.status_reason == "shop.web[0] was not healthy within healthy_deadline 10s"
    assert result.groups["web"].unhealthy == 1


def test_a_failed_allocation_fails_the_deployment_with_its_reason() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    bad = new(v2, 0, "a0", healthy=False, status=AllocStatus.FAILED, status_reason="exit 1")
    bad = bad.model_copy(update={"deployment": d.id})

    result = deploy.step(d, v2.spec, [*old(v1), bad], at(1))
    assert result.status_reason == "shop.web[0] failed: exit 1"


def test_progress_deadline_counts_from_the_last_allocation_that_became_healthy() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    a1, a2 = old(v1)[1:]
    b0 = new(v2, 0, "a0", status=AllocStatus.RUNNING, healthy=True)
    b1 = new(v2, 1, "a1", status=AllocStatus.RUNNING)

    moved = deploy.step(d, v2.spec, [b0, a1, a2], at(20))
    assert moved.progress_at == at(20)  # b0 became healthy: progress
    still = deploy.step(moved, v2.spec, [b0, b1, a2], at(49))
    assert still.status is DeploymentStatus.RUNNING
    late = deploy.step(still, v2.spec, [b0, b1, a2], at(50))
    assert late.status is DeploymentStatus.FAILED
    assert late.status_reason == (
        "no allocation became healthy within progress_deadline 30s (1 of 3 healthy)"
    )


def test_healthy_canaries_wait_for_promotion_then_promote_rolls_on() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", canary=1)
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    c0 = alloc(v2, 0, "n4", id="c0", canary=True, deployment=d.id, healthy=True)

    waiting = deploy.step(d, v2.spec, [*old(v1), c0], at(3))
    assert waiting.status is DeploymentStatus.WAITING
    assert waiting.status_reason == (
        "the canary is healthy: cube job promote shop to roll on, cube job fail shop to go back"
    )
    assert waiting.groups["web"].canaries == ["c0"]
    promoted = deploy.promote(waiting, at(4))
    assert promoted.status is DeploymentStatus.RUNNING
    assert promoted.groups["web"].promoted


def test_canaries_not_yet_healthy_cannot_be_promoted() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", canary=1)
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    with pytest.raises(Conflict, match="not all healthy yet"):
        deploy.promote(d, T0)
    plain = deploy.new_deployment(version(2, "x:2"), old(v1), from_version=1, revert=False, now=T0)
    with pytest.raises(Conflict, match="no canary to promote"):
        deploy.promote(plain, T0)


def test_a_deployment_that_ended_cannot_be_failed_again() -> None:
    d = Deployment(job="shop", version=2, status=DeploymentStatus.SUCCESSFUL)
    with pytest.raises(Conflict, match="successful already"):
        deploy.fail(d, "by hand", T0)
    running = Deployment(job="shop", version=2)
    assert deploy.fail(running, "failed by hand", T0).status is DeploymentStatus.FAILED


def test_an_ended_deployment_is_left_as_it_is() -> None:
    d = Deployment(job="shop", version=2, status=DeploymentStatus.FAILED, status_reason="x")
    assert deploy.step(d, version(2).spec, [], at(100)) == d


# --- the update block ----------------------------------------------------------------------


def readme_update_example() -> JobSpec:
    """The job file of the README's section on updates."""
    text = README.read_text(encoding="utf-8").split("### Updates", 1)[1]
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    return parse_job_text(block)


def test_the_update_block_s_defaults_are_the_readme_s() -> None:
    s = parse_job({"job": "a", "groups": [{"name": "g", "tasks": [{"name": "t", "image": "i"}]}]})
    policy = update_policy(s, s.groups[0])
    assert policy == UpdatePolicy(
        max_parallel=1,
        order=UpdateOrder.STOP_FIRST,
        min_healthy_time=10,
        healthy_deadline=120,
        progress_deadline=600,
        auto_revert=False,
        canary=0,
    )


def test_the_readme_s_update_example_parses_as_it_says() -> None:
    s = readme_update_example()
    assert s.update == UpdatePolicy(
        max_parallel=1,
        order=UpdateOrder.START_FIRST,
        min_healthy_time=10,
        healthy_deadline=120,
        progress_deadline=600,
        auto_revert=True,
        canary=1,
    )


def test_a_group_s_update_block_replaces_the_job_s() -> None:
    s = parse_job(
        {
            "job": "a",
            "update": {"max_parallel": 4, "canary": 2},
            "groups": [
                {
                    "name": "g",
                    "tasks": [{"name": "t", "image": "i"}],
                    "update": {"order": "start-first"},
                },
                {"name": "h", "tasks": [{"name": "t", "image": "i"}]},
            ],
        }
    )
    assert update_policy(s, s.groups[0]) == UpdatePolicy(order=UpdateOrder.START_FIRST)
    assert update_policy(s, s.groups[1]) == UpdatePolicy(max_parallel=4, canary=2)


def test_changing_only_the_update_block_moves_allocations_in_place() -> None:
    v1, v2 = version(1), version(2, max_parallel=3, canary=1)
    assert shape(plan_of(v2, old(v1), deployment(v2))) == {"in_place": ["a0", "a1", "a2"]}


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"update": {"max_parallel": 0}}, "update.max_parallel", "greater than or equal to 1"),
        ({"update": {"order": "sideways"}}, "update.order", "stop-first"),
        ({"update": {"min_healthy_time": "5m"}}, "update.healthy_deadline", "longer than"),
        (
            {"update": {"healthy_deadline": "20m"}},
            "update.progress_deadline",
            "at least healthy_deadline",
        ),
        ({"update": {"auto_revert": "yes"}}, "update.auto_revert", "boolean"),
        ({"update": {"canary": -1}}, "update.canary", "greater than or equal to 0"),
        ({"update": {"surge": 1}}, "update.surge", "unknown field; the fields here: auto_revert"),
        ({"type": "batch", "update": {}}, "update", "batch job"),
        ({"type": "system", "update": {"canary": 1}}, "update.canary", "no canary"),
        ({"type": "system", "update": {"order": "start-first"}}, "update.order", "stop-first"),
    ],
)
def test_a_bad_update_block_names_the_field(data: dict[str, Any], path: str, message: str) -> None:
    group: dict[str, Any] = {"name": "g", "tasks": [{"name": "t", "image": "i"}]}
    with pytest.raises(InvalidSpec) as caught:
        parse_job({"job": "a", "groups": [group], **data})
    fields = {e.field: e.message for e in caught.value.errors}
    assert path in fields, fields
    assert message in fields[path]


def test_a_group_s_bad_update_block_names_the_group() -> None:
    group = {
        "name": "g",
        "tasks": [{"name": "t", "image": "i"}],
        "update": {"min_healthy_time": "5m"},
    }
    with pytest.raises(InvalidSpec) as caught:
        parse_job({"job": "a", "groups": [group]})
    assert [e.field for e in caught.value.errors] == ["groups[0].update.healthy_deadline"]


def test_step_returns_the_deployment_itself_when_nothing_changed() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.step(
        deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0),
        v2.spec,
        old(v1),
        at(1),
    )
    assert deploy.step(d, v2.spec, old(v1), at(2)) is d


# --- pause ---------------------------------------------------------------------------------


def test_a_paused_deployment_replaces_nothing_and_places_no_canary() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2", max_parallel=3)
    plan = plan_of(v2, old(v1), deployment(v2, status=DeploymentStatus.PAUSED))
    assert shape(plan) == {"keep": ["a0", "a1", "a2"]}
    assert plan.keep[0].reason == "waits to be updated to version 2: the deployment is paused"
    v3 = version(3, "cube-busybox:3", canary=1)
    paused = canary_deployment(v3, status=DeploymentStatus.PAUSED)
    assert not plan_of(v3, old(v1), paused).place


def test_a_paused_deployment_misses_no_deadline_and_resuming_restarts_the_count() -> None:
    v1, v2 = version(1), version(2, "cube-busybox:2")
    d = deploy.new_deployment(v2, old(v1), from_version=1, revert=False, now=T0)
    paused = deploy.pause(d, at(1))
    assert paused.status is DeploymentStatus.PAUSED
    later = deploy.step(paused, v2.spec, old(v1), at(100))  # far past progress_deadline 30s
    assert later.status is DeploymentStatus.PAUSED
    resumed = deploy.resume(later, at(100))
    assert (resumed.status, resumed.progress_at) == (DeploymentStatus.RUNNING, at(100))
    assert deploy.step(resumed, v2.spec, old(v1), at(129)).status is DeploymentStatus.RUNNING
    with pytest.raises(Conflict, match="not paused"):
        deploy.resume(resumed, at(101))
    with pytest.raises(Conflict, match="only a running one can be paused"):
        deploy.pause(paused, at(101))
