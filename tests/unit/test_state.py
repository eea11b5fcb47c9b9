"""The task state machine: the table in cube.task.state, enforced by Task.transition."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cube.errors import IllegalTransition
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskSpec
from cube.task.state import TERMINAL, TRANSITIONS, State, can_transition, check_transition

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ALL_PAIRS = list(itertools.product(State, State))


def make_task(state: State = State.PENDING) -> Task:
    task = Task(spec=TaskSpec(name="web", image="cube-busybox:latest"), state=state)
    task.node = "node-1"
    return task


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    assert {State.COMPLETED, State.FAILED} == TERMINAL


def test_every_state_is_reachable_from_pending() -> None:
    seen, frontier = {State.PENDING}, [State.PENDING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(State)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (State.PENDING, State.RUNNING),
        (State.RUNNING, State.SCHEDULED),
        (State.RUNNING, State.RUNNING),
    ],
)
def test_known_illegal_transitions(current: State, target: State) -> None:
    """A container cannot start unplaced, nor be 'placed' while it runs."""
    assert not can_transition(current, target)


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: s.value)
def test_transition_follows_the_table(current: State, target: State) -> None:
    task = make_task(current)
    before = task.model_dump()
    if target in TRANSITIONS[current]:
        assert can_transition(current, target)
        check_transition(current, target)
        now = T0 + timedelta(seconds=5)
        event = task.transition(target, "because", exit_code=3, now=now)
        assert isinstance(event, TaskEvent)
        assert (event.previous, event.state, event.reason) == (current, target, "because")
        assert (event.time, event.node) == (now, "node-1")
        assert (task.state, task.reason, task.updated_at) == (target, "because", now)
    else:
        assert not can_transition(current, target)
        with pytest.raises(IllegalTransition) as excinfo:
            task.transition(target, "because")
        message = str(excinfo.value)
        assert current.title in message
        assert target.title in message
        assert (excinfo.value.current, excinfo.value.target) == (current.title, target.title)
        assert task.model_dump() == before, "a refused transition must change nothing"


def test_running_resets_the_previous_outcome() -> None:
    task = make_task(State.SCHEDULED)
    t1, t2, t3 = (T0 + timedelta(seconds=n) for n in (1, 2, 3))
    task.transition(State.RUNNING, "started", now=T0)
    task.transition(State.FAILED, "exit 1", exit_code=1, now=t1)
    assert (task.exit_code, task.finished_at, task.is_terminal) == (1, t1, True)

    task.transition(State.SCHEDULED, "restart 1", now=t2)
    task.transition(State.RUNNING, "started", now=t3)
    assert task.started_at == t3
    assert (task.exit_code, task.finished_at, task.is_terminal) == (None, None, False)


@settings(deadline=None, max_examples=200)
@given(data=st.data(), steps=st.integers(min_value=1, max_value=30))
def test_random_walks_keep_the_task_consistent(data: st.DataObject, steps: int) -> None:
    task = make_task()
    events: list[TaskEvent] = []
    for i in range(steps):
        current = task.state
        illegal = sorted(set(State) - TRANSITIONS[current])
        if illegal:
            wrong = data.draw(st.sampled_from(illegal), label="illegal")
            before = task.model_dump()
            with pytest.raises(IllegalTransition):
                task.transition(wrong, "nope")
            assert task.model_dump() == before

        target = data.draw(st.sampled_from(sorted(TRANSITIONS[current])), label="target")
        code = data.draw(st.none() | st.integers(-1, 255), label="exit_code")
        now = T0 + timedelta(seconds=i + 1)
        started, finished, exit_code = task.started_at, task.finished_at, task.exit_code
        events.append(task.transition(target, f"step {i}", exit_code=code, now=now))

        assert task.state is target
        assert task.updated_at == now
        assert task.is_terminal == (target in TERMINAL)
        if target is State.RUNNING:
            assert (task.started_at, task.exit_code, task.finished_at) == (now, None, None)
        elif target in TERMINAL:
            assert (task.started_at, task.exit_code, task.finished_at) == (started, code, now)
        else:  # pending/scheduled leave the last run's record alone
            assert (task.started_at, task.exit_code, task.finished_at) == (
                started,
                exit_code,
                finished,
            )
        if task.started_at and task.finished_at:
            assert task.started_at <= task.finished_at

    assert events[0].previous is State.PENDING
    for earlier, later in itertools.pairwise(events):
        assert later.previous is earlier.state
        assert earlier.time < later.time
    assert events[-1].state is task.state
