"""The job service's pure decisions: an allocation's status from its tasks, task IDs, which
nodes count as bad, and the CLI's judgement of a job's progress (table tests; the passes
in-process are tests/component/test_job_applier.py's)."""

from __future__ import annotations

from typing import Any

import pytest

from cube.cli.job_follow import judge
from cube.job.blocked import PlacementFailure
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobStatus,
)
from cube.job.parse import parse_job
from cube.job.spec import JobSpec, JobType
from cube.job.wire import JobDetail
from cube.manager.allocs import (
    MAX_TASK_ID,
    alloc_task_id,
    derive_status,
    on_bad_node,
    passed_over,
)
from cube.node import Node, NodeState
from cube.scheduler import make_scheduler
from cube.task.model import DesiredState, Task
from cube.task.spec import RestartPolicy, RestartPolicyName, TaskRequest, TaskSpec
from cube.task.state import State
from tests.support.fake_nodes import (
    node,
)


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


SERVICE = parse_job(
    {"job": "shop", "groups": [{"name": "web", "count": 2, "tasks": [{"name": "a", "image": "b"}]}]}
)


def detail(
    *allocs: Allocation,
    spec: JobSpec = SERVICE,
    status: JobStatus = JobStatus.RUNNING,
    failures: dict[str, PlacementFailure] | None = None,
) -> JobDetail:
    return JobDetail(
        job=Job(id=spec.job, status=status, status_reason="why"),
        spec=spec,
        allocations=list(allocs),
        placement_failures=failures or {},
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


def test_a_placement_that_fits_nowhere_fails_the_run_with_the_filters_reason() -> None:
    cpu = PlacementFailure(count=1, reason="no node has 9 free CPU", filtered={"cpu": 2})
    verdict = judge(detail(alloc(status=AllocStatus.RUNNING), failures={"web": cpu}))
    assert verdict.failed == [
        "shop.web: 1 of 2 not placed: no node has 9 free CPU (filtered: cpu 2 nodes)"
    ]
    assert verdict.blocked


def test_a_placement_that_fits_nowhere_waits_while_another_is_stopping_or_starting() -> None:
    fits = {"web": PlacementFailure(count=1, reason="no node fits")}
    stopping = alloc(id="a3", desired=AllocDesired.STOP, status=AllocStatus.RUNNING)
    assert judge(detail(alloc(status=AllocStatus.RUNNING), stopping, failures=fits)).failed == []
    starting = alloc(status=AllocStatus.PENDING)  # may fail and free its node's room
    assert judge(detail(starting, failures=fits)).failed == []


def test_a_batch_is_there_when_complete_and_has_failed_when_failed() -> None:
    batch = SERVICE.model_copy(update={"type": JobType.BATCH})
    done = [alloc(id=f"a{i}", index=i, status=AllocStatus.COMPLETE) for i in range(2)]
    assert judge(detail(*done, spec=batch, status=JobStatus.COMPLETE)).done
    failed = judge(detail(*done, spec=batch, status=JobStatus.FAILED))
    assert failed.failed == ["job shop failed: why"]
