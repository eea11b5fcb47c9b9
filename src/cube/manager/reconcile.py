"""Merging what a node reports about a task into the manager's record (pure logic).

The node is the source of truth for what actually runs; the manager is the source
of truth for what should run. Each collection pass the manager replays the node's
new events through its *own* transition table, so the manager's history is a legal
path too, and a missed pass heals on the next one (level-triggered).
"""

from __future__ import annotations

from collections.abc import Sequence

from cube.task.model import DesiredState, Task, TaskEvent
from cube.task.state import State, can_transition


def needs_merge(task: Task, reported: Task) -> bool:
    """Whether the node's copy says something the manager's does not know yet."""
    return (
        task.state is not reported.state
        or task.restarts != reported.restarts
        or task.reason != reported.reason
        or task.container_id != reported.container_id
        or task.health is not reported.health
    )


def merge_report(task: Task, reported: Task, node_events: Sequence[TaskEvent]) -> list[TaskEvent]:
    """Bring ``task`` up to date with the node's copy; return the events it added.

    ``task.node_events`` counts the node's events already merged. A node that lists
    fewer events than that has forgotten the task and started it over, so its
    history is merged from the beginning again.
    """
    if len(node_events) < task.node_events:
        task.node_events = 0
    added: list[TaskEvent] = []
    merged = task.node_events
    for event in node_events[task.node_events :]:
        if event.time > reported.updated_at:
            # Newer than the copy (read just before the events): merging it now would mix a
            # Failed state with the Running copy's fields (no exit code...). Next pass.
            break
        merged += 1
        # The node's own "submitted"/"accepted" steps repeat what the manager did, and only
        # the manager sends a task back to Pending: a node's Pending is its creation record.
        if (
            event.state is State.PENDING
            or event.state is task.state
            or not can_transition(task.state, event.state)
        ):
            continue
        added.append(
            task.transition(event.state, event.reason, exit_code=event.exit_code, now=event.time)
        )
    task.node_events = merged
    task.container_id = reported.container_id
    task.ports = list(reported.ports)
    task.restarts = reported.restarts
    task.exit_code = reported.exit_code
    task.reason = reported.reason
    task.health = reported.health
    task.started_at = reported.started_at
    task.finished_at = reported.finished_at
    return added


def gave_up(task: Task, reported: Task, node: str) -> bool:
    """Whether ``node`` stopped, on its own, a task the manager still wants run there.

    Only a node can stop a copy the manager did not ask it to: one whose manager was
    silent longer than its ``--stop-after-disconnect``, or one that came back and was
    told the task was no longer its own. Merging that end would finish the task
    (Completed) though its user wants it running; it must be placed again instead.
    """
    return (
        task.node == node
        and task.desired is DesiredState.RUN
        and task.state in (State.SCHEDULED, State.RUNNING)
        and reported.desired is DesiredState.STOP
    )
