"""Merging a node's report into the manager's record: cube.manager.reconcile, pure logic.

The node's copy of a task and its event history are built by hand, the way a
worker's runner would have written them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cube.manager.reconcile import merge_report, needs_merge
from cube.task.model import Health, PublishedPort, Task, TaskEvent
from cube.task.spec import TaskSpec
from cube.task.state import State

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NODE = "node-1"
SPEC = TaskSpec(name="web", image="cube-busybox:latest")


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(
    seconds: int,
    previous: State | None,
    state: State,
    reason: str,
    *,
    exit_code: int | None = None,
) -> TaskEvent:
    return TaskEvent(
        time=at(seconds),
        previous=previous,
        state=state,
        reason=reason,
        exit_code=exit_code,
        node=NODE,
    )


#: What a worker records for a task it accepts and starts.
FIRST_RUN = [
    event(1, None, State.PENDING, f"submitted to node {NODE}"),
    event(2, State.PENDING, State.SCHEDULED, f"accepted by node {NODE}"),
    event(3, State.SCHEDULED, State.RUNNING, "container aaaaaaaaaaaa started"),
]
#: ... then a crash and a restart in place.
CRASH_AND_RESTART = [
    event(10, State.RUNNING, State.FAILED, "exited with code 3", exit_code=3),
    event(11, State.FAILED, State.SCHEDULED, "exited with code 3; restart 1 (on-failure)"),
    event(12, State.SCHEDULED, State.RUNNING, "container bbbbbbbbbbbb started"),
]


def manager_task() -> Task:
    """The manager's record: placed on NODE, not yet heard back."""
    task = Task(id="t1", spec=SPEC, created_at=T0, updated_at=T0)
    task.transition(State.SCHEDULED, f"placed on {NODE}", now=T0)
    task.node = NODE
    return task


def node_copy(last: TaskEvent, **fields: object) -> Task:
    """The node's copy of the task, in the state of its ``last`` event."""
    copy = Task(id="t1", spec=SPEC, node=NODE, state=last.state, reason=last.reason)
    return copy.model_copy(update=fields)


def test_first_report_adds_only_the_running_event() -> None:
    task = manager_task()
    reported = node_copy(FIRST_RUN[-1], container_id="a" * 64, started_at=at(3))

    added = merge_report(task, reported, FIRST_RUN)

    assert [(e.previous, e.state) for e in added] == [(State.SCHEDULED, State.RUNNING)]
    assert added[0].reason == "container aaaaaaaaaaaa started"
    assert added[0].time == at(3)
    assert added[0].node == NODE
    assert task.state is State.RUNNING
    assert task.started_at == at(3)
    assert task.container_id == "a" * 64
    assert task.node_events == 3


def test_later_reports_add_only_what_is_new() -> None:
    task = manager_task()
    merge_report(task, node_copy(FIRST_RUN[-1]), FIRST_RUN)
    events = FIRST_RUN + CRASH_AND_RESTART
    reported = node_copy(events[-1], restarts=1, container_id="b" * 64)

    added = merge_report(task, reported, events)

    assert [(e.state, e.reason, e.time, e.exit_code) for e in added] == [
        (e.state, e.reason, e.time, e.exit_code) for e in CRASH_AND_RESTART
    ]
    assert added[0].exit_code == 3
    assert task.state is State.RUNNING
    assert task.restarts == 1
    assert task.node_events == 6


def test_merging_the_same_events_again_adds_nothing() -> None:
    task = manager_task()
    events = FIRST_RUN + CRASH_AND_RESTART
    reported = node_copy(events[-1], restarts=1)
    assert len(merge_report(task, reported, events)) == 4
    before = task.model_copy(deep=True)

    assert merge_report(task, reported, events) == []
    assert merge_report(task, reported, events) == []
    assert task == before


def test_a_node_that_forgot_the_task_is_merged_from_the_start() -> None:
    task = manager_task()
    merge_report(task, node_copy(CRASH_AND_RESTART[-1], restarts=1), FIRST_RUN + CRASH_AND_RESTART)
    assert task.node_events == 6
    # the worker lost its store, rebuilt the task from its container's labels, then it crashed
    forgotten = [
        event(20, None, State.PENDING, "rebuilt from labels"),
        event(20, State.PENDING, State.SCHEDULED, f"adopted by node {NODE}"),
        event(20, State.SCHEDULED, State.RUNNING, "adopted container bbbbbbbbbbbb"),
        event(21, State.RUNNING, State.FAILED, "exited with code 9", exit_code=9),
    ]
    reported = node_copy(forgotten[-1], exit_code=9)

    added = merge_report(task, reported, forgotten)

    assert [(e.state, e.exit_code, e.time) for e in added] == [(State.FAILED, 9, at(21))]
    assert task.state is State.FAILED
    assert task.node_events == 4
    assert task.restarts == 0  # the node's count, which started over too
    # and the next pass goes on from there
    later = [*forgotten, event(22, State.FAILED, State.SCHEDULED, "restart 1 (on-failure)")]
    assert [e.state for e in merge_report(task, node_copy(later[-1]), later)] == [State.SCHEDULED]


def test_a_node_that_forgot_everything_is_not_an_error() -> None:
    task = manager_task()
    merge_report(task, node_copy(FIRST_RUN[-1]), FIRST_RUN)

    added = merge_report(task, node_copy(FIRST_RUN[-1]), [])

    assert added == []
    assert task.state is State.RUNNING
    assert task.node_events == 0


def test_a_nodes_pending_events_are_never_applied() -> None:
    """Only the manager sends a task back to Pending, even where the table would allow it."""
    task = manager_task()
    events = [
        *FIRST_RUN,
        event(4, State.RUNNING, State.COMPLETED, "exited with code 0", exit_code=0),
        event(5, None, State.PENDING, "rebuilt from labels"),  # legal from Completed
        event(6, State.PENDING, State.SCHEDULED, f"adopted by node {NODE}"),
    ]

    added = merge_report(task, node_copy(events[-1]), events)

    assert State.PENDING not in [e.state for e in added]
    assert [e.state for e in added] == [State.RUNNING, State.COMPLETED, State.SCHEDULED]
    assert added[-1].previous is State.COMPLETED


def test_the_nodes_fields_are_copied() -> None:
    task = manager_task()
    events = FIRST_RUN + CRASH_AND_RESTART
    ports = [PublishedPort(container=80, host=8080)]
    reported = node_copy(
        events[-1],
        container_id="b" * 64,
        ports=ports,
        restarts=1,
        exit_code=None,
        reason="container bbbbbbbbbbbb started",
        health=Health.HEALTHY,
        started_at=at(12),
    )
    task.exit_code = 99  # stale: the node's copy wins
    task.reason = "stale"

    merge_report(task, reported, events)

    assert task.container_id == "b" * 64
    assert task.ports == ports
    assert task.ports is not reported.ports
    assert task.restarts == 1
    assert task.exit_code is None
    assert task.reason == "container bbbbbbbbbbbb started"
    assert task.health is Health.HEALTHY
    assert task.started_at == at(12)


def test_the_exit_code_of_a_failure_is_copied() -> None:
    task = manager_task()
    events = [*FIRST_RUN, CRASH_AND_RESTART[0]]
    reported = node_copy(events[-1], exit_code=3, finished_at=at(10))

    merge_report(task, reported, events)

    assert task.state is State.FAILED
    assert task.exit_code == 3
    assert task.finished_at == at(10)


def test_needs_merge_until_merged() -> None:
    task = manager_task()
    events = FIRST_RUN + CRASH_AND_RESTART
    reported = node_copy(events[-1], restarts=1, container_id="b" * 64, health=Health.HEALTHY)
    assert needs_merge(task, reported)

    merge_report(task, reported, events)

    assert not needs_merge(task, reported)


def test_needs_merge_notices_each_field() -> None:
    task = manager_task()
    reported = node_copy(FIRST_RUN[-1], container_id="a" * 64)
    merge_report(task, reported, FIRST_RUN)
    assert not needs_merge(task, reported)

    for change in (
        {"restarts": 1},
        {"reason": "something else"},
        {"container_id": "c" * 64},
        {"health": Health.UNHEALTHY},
        {"state": State.FAILED},
    ):
        assert needs_merge(task, reported.model_copy(update=change)), change
