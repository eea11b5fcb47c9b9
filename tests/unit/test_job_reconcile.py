"""The job reconciler, cube.job.reconcile: (job, version, allocations, nodes, now) -> plan.

Pure table tests in the manner of Nomad's ``scheduler/reconcile_test.go``: each builds
the allocations an applier would have written, asks for a plan at a given ``now``, and
checks what the plan places, stops, updates, keeps and waits for, and why.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cube.job.eligibility import datacenter_of, ineligibility
from cube.job.holders import is_holder
from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobStatus,
    JobVersion,
    RescheduleEvent,
    next_version,
)
from cube.job.parse import parse_job
from cube.job.plan import Plan
from cube.job.reconcile import reconcile
from cube.node import Node, NodeState
from tests.support.job_records import (
    T0,
    N,
    alloc,
    at,
    plan_for,
    shape,
    some_allocations,
    spec,
    two_versions,
    version,
)


def running(v: JobVersion, count: int = 3, node: str = "n1") -> list[Allocation]:
    return [alloc(v, i, node, id=f"a{i}") for i in range(count)]


# --- service: counts -----------------------------------------------------------------------


def test_fresh_service_places_every_index() -> None:
    plan = plan_for(version(spec()), [])

    assert shape(plan) == {"place": [(0, None, None), (1, None, None), (2, None, None)]}
    assert all("count is 3" in p.reason for p in plan.place)
    assert (plan.status, plan.status_reason) == (JobStatus.PENDING, "no allocation runs yet")
    assert plan.wake_at is None


def test_steady_service_changes_nothing() -> None:
    v = version(spec())
    plan = plan_for(v, running(v))

    assert shape(plan) == {"keep": ["a0", "a1", "a2"]}
    assert plan.changes_nothing
    assert plan.keep[0].reason == "running on n1"
    assert plan.status is JobStatus.RUNNING


def test_one_running_allocation_is_counted_in_the_singular() -> None:
    """``cube job status`` of a system job on one node said "1 allocations running"."""
    v = version(spec(count=1))
    assert plan_for(v, running(v, 1)).status_reason == "1 allocation running"
    b = version(spec("batch", count=1))
    done = [alloc(b, 0, status=AllocStatus.COMPLETE, id="a0")]
    assert plan_for(b, done).status_reason == "the allocation completed"


def test_resubmitting_the_same_spec_changes_nothing() -> None:
    """Submit is idempotent: no new version, so the same plan as before: keep everything."""
    v = version(spec())
    assert next_version(v, spec(), now=at(60)) is None
    plan = plan_for(v, running(v), now=at(60))
    assert plan.changes_nothing
    assert shape(plan) == {"keep": ["a0", "a1", "a2"]}


def test_a_plan_describes_itself_one_line_per_entry() -> None:
    v = version(spec(count=2))
    plan = plan_for(v, [alloc(v, 0, id="a0"), alloc(v, 5, id="a5")])
    assert plan.describe() == [
        "job shop version 1: Running",
        "place   web[1]: count is 2; index 1 has no allocation",
        "stop    a5: web was scaled to 2",
        "keep    a0: running on n1",
    ]


def test_a_plan_round_trips_through_json() -> None:
    """What ``cube job plan`` and the HTTP API would send: pydantic reads the dataclasses."""
    v = version(spec(count=2, reschedule=RESCHEDULE))
    plan = plan_for(v, [failed(v, 1)], now=at(5))  # a wait with a due time
    plan.place.append(plan_for(v, [failed(v, 1)], now=at(60)).place[0])  # with history

    adapter = TypeAdapter(Plan)
    assert adapter.validate_json(adapter.dump_json(plan)) == plan


def test_pending_allocations_are_kept_while_their_tasks_start() -> None:
    v = version(spec(count=1))
    plan = plan_for(v, [alloc(v, 0, "n1", AllocStatus.PENDING, id="a0")])

    assert shape(plan) == {"keep": ["a0"]}
    assert plan.keep[0].reason == "pending on n1"
    assert plan.status is JobStatus.PENDING


def test_scale_up_places_the_missing_indexes_and_moves_the_others_in_place() -> None:
    v1 = version(spec(count=3))
    v2 = version(spec(count=5), 2)
    plan = plan_for(v2, running(v1))

    assert shape(plan) == {
        "place": [(3, None, None), (4, None, None)],
        "in_place": ["a0", "a1", "a2"],  # count is not what the containers run
    }
    assert plan.in_place[0].reason == "version 2 changes nothing shop.web[0] runs"


def test_scale_down_stops_the_highest_indexes_first() -> None:
    v1 = version(spec(count=5))
    v2 = version(spec(count=2), 2)
    plan = plan_for(v2, running(v1, 5))

    assert shape(plan) == {
        "stop": [("a4", False), ("a3", False), ("a2", False)],
        "in_place": ["a0", "a1"],
    }
    assert plan.stop[0].reason == "web was scaled to 2"


def test_scale_to_zero_is_running_with_nothing_to_run() -> None:
    v = version(spec(count=0))
    plan = plan_for(v, [])
    assert shape(plan) == {}
    assert (plan.status, plan.status_reason) == (JobStatus.RUNNING, "every group is scaled to 0")


def test_replaced_and_stopped_allocations_are_history() -> None:
    v = version(spec(count=1))
    old = alloc(v, 0, status=AllocStatus.FAILED, id="old", replaced_by="new")
    stopped = alloc(v, 0, status=AllocStatus.COMPLETE, id="stopped", desired=AllocDesired.STOP)
    new = alloc(v, 0, "n2", id="new", replaces="old")
    plan = plan_for(v, [old, stopped, new])

    assert shape(plan) == {"keep": ["new"]}
    assert [is_holder(a) for a in (old, stopped, new)] == [False, False, True]


def test_two_holders_of_one_index_keep_the_running_one() -> None:
    """A crash between two writes of the applier can leave two; one goes."""
    v = version(spec(count=1))
    pending = alloc(v, 0, "n2", AllocStatus.PENDING, id="late", created_at=at(5))
    plan = plan_for(v, [alloc(v, 0, id="a0"), pending])

    assert shape(plan) == {"stop": [("late", False)], "keep": ["a0"]}
    assert "holds the same slot" in plan.stop[0].reason


def test_a_group_removed_from_the_job_is_stopped() -> None:
    v1 = version(spec())
    v2 = version(
        parse_job(
            {
                "job": "shop",
                "groups": [
                    {"name": "db", "count": 0, "tasks": [{"name": "pg", "image": "cube-busybox"}]}
                ],
            }
        ),
        2,
    )
    plan = plan_for(v2, running(v1, 1))

    assert shape(plan) == {"stop": [("a0", False)]}
    assert plan.stop[0].reason == "group web is not in version 2"


# --- service: nodes lost and drained -------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "why"),
    [
        ([N("n1", state=NodeState.DOWN), N("n2")], "node n1 is down"),
        ([N("n2")], "node n1 is gone"),
    ],
    ids=["down", "gone"],
)
def test_a_lost_node_s_allocation_is_replaced_at_once(nodes: list[N], why: str) -> None:
    v = version(spec(count=1))
    lost = alloc(v, 0, id="a0", reschedule_events=[])
    plan = plan_for(v, [lost], nodes)

    assert shape(plan) == {"stop": [("a0", True)], "place": [(0, "a0", None)]}
    assert plan.stop[0].reason == why
    place = plan.place[0]
    assert place.reason == f"replaces shop.web[0]: {why}"
    assert place.avoid == "n1"
    assert place.reschedule_events == ()  # a lost allocation did not fail: no attempt used
    assert plan.replacements == [place]


def test_a_draining_node_s_allocation_migrates() -> None:
    v = version(spec(count=2))
    allocs = [alloc(v, 0, "n1", id="a0"), alloc(v, 1, "n2", id="a1")]
    plan = plan_for(v, allocs, [N("n1", drain=True), N("n2")])

    assert shape(plan) == {"stop": [("a0", False)], "place": [(0, "a0", None)], "keep": ["a1"]}
    assert plan.stop[0].reason == "node n1 is draining"


def test_an_allocation_marked_lost_but_not_replaced_is_replaced() -> None:
    """The applier recorded Lost and crashed before placing the replacement."""
    v = version(spec(count=1))
    plan = plan_for(v, [alloc(v, 0, status=AllocStatus.LOST, id="a0")])
    assert shape(plan) == {"place": [(0, "a0", None)]}
    assert plan.place[0].reason == "replaces shop.web[0]: it was lost"


# --- service: failures and rescheduling ----------------------------------------------------


def failed(v: JobVersion, attempts: int, **fields: Any) -> Allocation:
    history = [
        RescheduleEvent(time=T0, prev_alloc=f"p{i}", prev_node="n1") for i in range(attempts)
    ]
    return alloc(
        v,
        0,
        status=AllocStatus.FAILED,
        id="a0",
        status_reason="api exited with code 1",
        reschedule_events=history,
        **fields,
    )


RESCHEDULE = {"attempts": 3, "delay": "10s", "backoff": 2, "max_delay": "30s"}


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(0, 10.0), (1, 20.0), (2, 30.0)],  # 10s, 20s, then 40s capped at 30s
)
def test_a_failed_allocation_waits_its_backoff_then_is_replaced(
    attempts: int, delay: float
) -> None:
    v = version(spec(count=1, reschedule=RESCHEDULE))
    a0 = failed(v, attempts)

    early = plan_for(v, [a0], now=at(delay - 0.5))
    assert shape(early) == {"wait": [(0, "a0", at(delay))]}
    assert early.wake_at == at(delay)
    assert f"reschedule {attempts + 1} of 3 at" in early.wait[0].reason

    due = plan_for(v, [a0], now=at(delay))
    assert shape(due) == {"place": [(0, "a0", None)]}
    place = due.place[0]
    assert place.reason == (
        "replaces shop.web[0], which failed: api exited with code 1;"
        f" reschedule {attempts + 1} of 3"
    )
    assert len(place.reschedule_events) == attempts + 1
    assert place.reschedule_events[-1] == RescheduleEvent(
        time=at(delay), prev_alloc="a0", prev_node="n1", delay=delay
    )
    assert place.avoid == "n1"


def test_a_failed_allocation_whose_attempts_are_used_up_stays_failed() -> None:
    v = version(spec(count=1, reschedule=RESCHEDULE))
    plan = plan_for(v, [failed(v, 3)], now=at(3600))

    assert shape(plan) == {"keep": ["a0"]}
    assert plan.keep[0].reason == (
        "failed: api exited with code 1; failed for good after 3 reschedule attempts"
    )
    assert plan.wake_at is None
    assert (plan.status, plan.status_reason) == (
        JobStatus.PENDING,
        "no allocation runs; 1 failed for good",
    )


def test_a_service_reschedules_without_limit_by_default() -> None:
    v = version(spec(count=1))
    plan = plan_for(v, [failed(v, 50)], now=at(300))  # 5s * 2**50, capped at the 5m default
    assert shape(plan) == {"place": [(0, "a0", None)]}
    assert plan.place[0].reason.endswith("reschedule 51")


def test_a_service_allocation_that_ends_is_replaced_like_a_failed_one() -> None:
    v = version(spec(count=1))
    done = alloc(v, 0, status=AllocStatus.COMPLETE, id="a0")
    plan = plan_for(v, [done], now=at(5))
    assert shape(plan) == {"place": [(0, "a0", None)]}
    assert "ended (a service job runs until stopped)" in plan.place[0].reason


# --- updates -------------------------------------------------------------------------------


def test_a_changed_spec_updates_one_allocation_at_a_time() -> None:
    v1 = version(spec())
    v2 = version(spec(tasks=[{"name": "api", "image": "cube-busybox:2"}]), 2)
    plan = plan_for(v2, running(v1))

    assert shape(plan) == {"update": ["a0"], "keep": ["a1", "a2"]}
    assert plan.update[0].reason == "version 2 changes what shop.web[0] runs (was version 1)"
    assert plan.keep[0].reason == "waits to be updated to version 2: one at a time"


def test_the_next_update_waits_for_the_previous_to_stop_and_to_run() -> None:
    v1 = version(spec())
    v2 = version(spec(tasks=[{"name": "api", "image": "cube-busybox:2"}]), 2)
    rest = running(v1)[1:]
    stopping = alloc(v1, 0, id="a0", desired=AllocDesired.STOP, replaced_by="b0")
    new = alloc(v2, 0, "n2", AllocStatus.PENDING, id="b0", replaces="a0")

    # Old one still stopping, new one not running: nothing more starts.
    assert shape(plan_for(v2, [stopping, new, *rest])) == {"keep": ["b0", "a1", "a2"]}
    # Old one stopped, new one still pending: still nothing.
    stopped = stopping.model_copy(update={"status": AllocStatus.COMPLETE})
    assert shape(plan_for(v2, [stopped, new, *rest])) == {"keep": ["b0", "a1", "a2"]}
    # The new one runs: the next update starts.
    up = new.model_copy(update={"status": AllocStatus.RUNNING})
    assert shape(plan_for(v2, [stopped, up, *rest])) == {"update": ["a1"], "keep": ["b0", "a2"]}


def test_a_stopping_allocation_on_a_down_node_does_not_hold_the_update_up() -> None:
    """Its node will never report it stopped; waiting for it would wait forever."""
    v1 = version(spec(count=2))
    v2 = version(spec(count=2, tasks=[{"name": "api", "image": "cube-busybox:2"}]), 2)
    stuck = alloc(v1, 0, "n3", id="stuck", desired=AllocDesired.STOP, replaced_by="a0")
    allocs = [stuck, alloc(v2, 0, id="a0", replaces="stuck"), alloc(v1, 1, id="a1")]

    plan = plan_for(v2, allocs, [N("n1"), N("n2"), N("n3", state=NodeState.DOWN)])
    assert shape(plan) == {"update": ["a1"], "keep": ["a0"]}


def test_a_pending_allocation_is_updated_as_a_running_one_is_max_parallel_at_a_time() -> None:
    # Every allocation has a node (a placement that finds none records nothing:
    # cube.job.blocked), so none moves to a new version outside the update policy.
    v1 = version(spec())
    v2 = version(spec(tasks=[{"name": "api", "image": "cube-busybox:2"}]), 2)
    allocs = [alloc(v1, i, "n1", AllocStatus.PENDING, id=f"a{i}") for i in range(3)]
    assert shape(plan_for(v2, allocs)) == {"update": ["a0"], "keep": ["a1", "a2"]}


def test_a_changed_spec_replaces_a_failed_allocation_with_the_new_version() -> None:
    v1 = version(spec(count=1))
    v2 = version(spec(count=1, tasks=[{"name": "api", "image": "cube-busybox:2"}]), 2)
    plan = plan_for(v2, [failed(v1, 0)], now=at(5))
    assert shape(plan) == {"place": [(0, "a0", None)]}


# --- stop ----------------------------------------------------------------------------------


def test_a_stopped_job_stops_every_live_allocation() -> None:
    v = version(spec())
    allocs = [*running(v, 2), alloc(v, 2, status=AllocStatus.FAILED, id="a2")]
    plan = plan_for(v, allocs, stopped=True)

    assert shape(plan) == {"stop": [("a0", False), ("a1", False)]}
    assert plan.stop[0].reason == "the job was stopped"
    assert (plan.status, plan.status_reason) == (JobStatus.DEAD, "stopped")


# --- batch ---------------------------------------------------------------------------------


def batch(**group: Any) -> JobVersion:
    return version(spec("batch", **{"count": 10, "parallelism": 3, **group}))


def test_a_fresh_batch_starts_parallelism_allocations_and_queues_the_rest() -> None:
    plan = plan_for(batch(), [])

    assert [p.index for p in plan.place] == [0, 1, 2]
    assert [w.index for w in plan.wait] == list(range(3, 10))
    assert plan.wait[0].reason == "parallelism 3 reached: waits for a running allocation to finish"
    assert plan.wake_at is None  # a slot frees when an allocation ends: an event, not a time


def test_a_batch_starts_the_next_when_one_completes() -> None:
    v = batch()
    allocs = [
        alloc(v, 0, status=AllocStatus.COMPLETE, id="a0"),
        alloc(v, 1, id="a1"),
        alloc(v, 2, id="a2"),
    ]
    plan = plan_for(v, allocs)

    assert [p.index for p in plan.place] == [3]
    assert [w.index for w in plan.wait] == list(range(4, 10))
    assert [k.alloc for k in plan.keep] == ["a0", "a1", "a2"]
    assert plan.keep[0].reason == "completed"
    assert plan.status is JobStatus.RUNNING


def test_a_failed_batch_allocation_is_retried_within_parallelism() -> None:
    v = batch(count=4, reschedule={"attempts": 2, "delay": "1s"})
    allocs = [
        alloc(v, 0, status=AllocStatus.FAILED, id="a0"),
        alloc(v, 1, id="a1"),
        alloc(v, 2, id="a2"),
    ]
    plan = plan_for(v, allocs, now=at(1))

    # The retry of index 0 and the first start of index 3 share the one free slot.
    assert shape(plan) == {
        "place": [(0, "a0", None)],
        "keep": ["a1", "a2"],
        "wait": [(3, None, None)],
    }


def test_a_batch_whose_allocations_all_completed_is_complete() -> None:
    v = batch(count=3)
    allocs = [alloc(v, i, status=AllocStatus.COMPLETE, id=f"a{i}") for i in range(3)]
    plan = plan_for(v, allocs)

    assert plan.changes_nothing
    assert (plan.status, plan.status_reason) == (JobStatus.COMPLETE, "all 3 allocations completed")


def test_a_batch_with_an_allocation_failed_for_good_fails_once_the_others_finish() -> None:
    v = batch(count=4, reschedule={"attempts": 1})
    doomed = failed(v, 1)
    others = [alloc(v, 1, id="a1"), alloc(v, 2, status=AllocStatus.COMPLETE, id="a2")]

    plan = plan_for(v, [doomed, *others], now=at(3600))
    # Nothing new starts (index 3 never runs); the running one may finish.
    assert shape(plan) == {"keep": ["a0", "a1", "a2"]}
    assert (plan.status, plan.status_reason) == (
        JobStatus.RUNNING,
        "shop.web[0] failed for good: api exited with code 1; waiting for 1 to finish",
    )

    finished = others[0].model_copy(update={"status": AllocStatus.COMPLETE})
    plan = plan_for(v, [doomed, finished, others[1]], now=at(3600))
    assert (plan.status, plan.status_reason) == (
        JobStatus.FAILED,
        "shop.web[0] failed for good: api exited with code 1",
    )


def test_a_batch_allocation_on_a_lost_node_is_replaced_outside_parallelism() -> None:
    v = batch(count=4)
    allocs = [alloc(v, i, "n1" if i == 0 else "n2", id=f"a{i}") for i in range(3)]
    plan = plan_for(v, allocs, [N("n2")])

    assert shape(plan) == {
        "stop": [("a0", True)],
        "place": [(0, "a0", None)],
        "keep": ["a1", "a2"],
        "wait": [(3, None, None)],
    }


# --- system --------------------------------------------------------------------------------


def system(**group: Any) -> JobVersion:
    return version(spec("system", **group))


def on_nodes(v: JobVersion, *names: str) -> list[Allocation]:
    return [alloc(v, i, name, id=f"a-{name}") for i, name in enumerate(names)]


def test_a_system_job_runs_one_allocation_per_node() -> None:
    plan = plan_for(system(), [])
    assert shape(plan) == {"place": [(0, None, "n1"), (1, None, "n2"), (2, None, "n3")]}
    assert plan.place[0].reason == "node n1 is eligible and runs none"


def test_a_node_that_joins_gets_one() -> None:
    v = system()
    plan = plan_for(v, on_nodes(v, "n1", "n2", "n3"), [N("n1"), N("n2"), N("n3"), N("n4")])
    assert shape(plan) == {
        "place": [(3, None, "n4")],
        "keep": ["a-n1", "a-n2", "a-n3"],
    }


@pytest.mark.parametrize(
    ("n2", "lost", "why"),
    [
        (N("n2", drain=True), False, "node n2 is draining"),
        (N("n2", state=NodeState.DOWN), True, "node n2 is down"),
    ],
    ids=["drained", "down"],
)
def test_a_system_allocation_is_not_moved_elsewhere(n2: N, lost: bool, why: str) -> None:
    v = system()
    plan = plan_for(v, on_nodes(v, "n1", "n2", "n3"), [N("n1"), n2, N("n3")])
    assert shape(plan) == {"stop": [("a-n2", lost)], "keep": ["a-n1", "a-n3"]}
    assert plan.stop[0].reason == why


def test_an_undrained_node_gets_its_allocation_back() -> None:
    v = system()
    allocs = on_nodes(v, "n1", "n2", "n3")
    allocs[1] = allocs[1].model_copy(
        update={"desired": AllocDesired.STOP, "status": AllocStatus.COMPLETE}
    )

    drained = plan_for(v, allocs, [N("n1"), N("n2", drain=True), N("n3")])
    assert shape(drained) == {"keep": ["a-n1", "a-n3"]}

    undrained = plan_for(v, allocs, [N("n1"), N("n2"), N("n3")])
    assert shape(undrained) == {"place": [(1, None, "n2")], "keep": ["a-n1", "a-n3"]}


def test_a_system_job_skips_nodes_of_other_datacenters_and_labels() -> None:
    v = version(
        parse_job(
            {
                "job": "logs",
                "type": "system",
                "datacenters": ["dc1", "dc2"],
                "constraints": {"disk": "ssd"},
                "groups": [{"name": "web", "tasks": [{"name": "ship", "image": "busybox"}]}],
            }
        )
    )
    nodes = [
        N("a", labels={"disk": "ssd"}),
        N("b", labels={"disk": "ssd"}, datacenter="dc2"),
        N("c", labels={"disk": "ssd"}, datacenter="dc3"),
        N("d", labels={"disk": "hdd"}),
        N("e"),
    ]
    plan = reconcile(Job(id="logs"), v, [], nodes, T0)

    assert [p.node for p in plan.place] == ["a", "b"]
    reasons = {n.name: ineligibility(n, v.spec, v.spec.groups[0]) for n in nodes}
    assert reasons == {
        "a": None,
        "b": None,
        "c": "node c is in datacenter dc3, the job runs in dc1, dc2",
        "d": "node d has disk=hdd, the group needs disk=ssd",
        "e": "node e has no 'disk' label, the group needs disk=ssd",
    }


def test_a_failed_system_allocation_is_rescheduled_on_its_own_node() -> None:
    v = system()
    allocs = on_nodes(v, "n1", "n2")
    allocs[0] = allocs[0].model_copy(update={"status": AllocStatus.FAILED, "finished_at": T0})
    plan = plan_for(v, allocs, [N("n1"), N("n2")], now=at(5))

    assert shape(plan) == {"place": [(0, "a-n1", "n1")], "keep": ["a-n2"]}
    assert plan.place[0].avoid is None


def test_a_system_update_stays_on_its_node() -> None:
    v1 = system()
    v2 = version(spec("system", tasks=[{"name": "api", "image": "cube-busybox:2"}]), 2)
    plan = plan_for(v2, on_nodes(v1, "n1", "n2"), [N("n1"), N("n2")])

    assert shape(plan) == {"update": ["a-n1"], "keep": ["a-n2"]}
    assert plan.update[0].node == "n1"


def test_a_real_node_is_a_node_view() -> None:
    node = Node(name="w1", address="http://w1:5556", labels={"datacenter": "dc2"})
    assert datacenter_of(node) == "dc2"
    assert datacenter_of(Node(name="w2", address="http://w2:5556")) == "dc1"
    v = system()
    plan = reconcile(Job(id="shop"), v, [], [node, Node(name="w2", address="x")], T0)
    assert [p.node for p in plan.place] == ["w2"]


# --- properties ----------------------------------------------------------------------------


@st.composite
def situations(draw: st.DrawFn) -> tuple[JobVersion, list[Allocation], list[N], datetime]:
    versions = draw(two_versions())
    nodes = [
        N(f"n{i}", state=draw(st.sampled_from(list(NodeState))), drain=draw(st.booleans()))
        for i in range(draw(st.integers(0, 4)))
    ]
    allocs = some_allocations(draw, versions, [None, "n0", "n1", "n2", "n3", "gone"])
    return versions[1], allocs, nodes, at(draw(st.integers(0, 600)))


@settings(max_examples=300)
@given(situations())
def test_every_live_holder_gets_exactly_one_decision(
    case: tuple[JobVersion, list[Allocation], list[N], datetime],
) -> None:
    v, allocs, nodes, now = case
    plan = plan_for(v, allocs, nodes, now)

    decided = Counter(
        [s.alloc for s in plan.stop]
        + [u.alloc for u in plan.update]
        + [i.alloc for i in plan.in_place]
        + [k.alloc for k in plan.keep]
    )
    assert all(n == 1 for n in decided.values()), decided
    for a in allocs:
        if is_holder(a) and not a.is_terminal:
            assert decided[a.id] == 1, a
    # A slot is placed at most once, and a replacement names an allocation of the job.
    slots = Counter((p.group, p.index, p.node) for p in plan.place)
    assert all(n == 1 for n in slots.values())
    ids = {a.id for a in allocs}
    assert all(p.replaces in ids for p in plan.replacements)
    assert all(w.due is None or w.due > now for w in plan.wait)
