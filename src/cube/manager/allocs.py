"""Pure decisions of the job applier: an allocation's status, its tasks' IDs, where it may go.

The applier (:mod:`cube.manager.job_applier`) does the I/O; what it decides lives here, with the
clock and the records passed in, so that each case is a one-line test.

* :func:`derive_status`: what an allocation's tasks say of it (Running, Complete, Failed),
  and which tasks are still running though the allocation ended.
* :func:`alloc_task_id`: a task's ID from its allocation and name, so that sending a task
  twice (after a crash, a lost answer) runs one container, not two.
* :func:`passed_over`: Nomad's job anti-affinity: nodes that run none of the job's
  allocations (nor the one the allocation replaces) come first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    AllocTask,
    can_alloc_transition,
)
from cube.node import Node, NodeState
from cube.task.model import DesiredState, Task
from cube.task.restart import decide_restart
from cube.task.state import TERMINAL, State

#: The longest task ID the API accepts (``TaskRequest.id``).
MAX_TASK_ID = 64


def alloc_task_id(alloc_id: str, task_name: str) -> str:
    """``<alloc id>-<task name>``; a name too long for the ID is replaced by its hash."""
    candidate = f"{alloc_id}-{task_name}"
    if len(candidate) <= MAX_TASK_ID:
        return candidate
    digest = hashlib.sha256(task_name.encode()).hexdigest()
    return f"{alloc_id}-{digest}"[:MAX_TASK_ID]


def ended_for_good(task: Task) -> bool:
    """Whether a terminal task will not run again on its node.

    A task the manager ended (its send failed, its allocation stops) has ``desired: stop``;
    otherwise the node restarts it unless its restart policy gives up, the same pure
    decision the worker takes (:func:`cube.task.restart.decide_restart`).
    """
    if task.state not in TERMINAL:
        return False
    if task.desired is DesiredState.STOP:
        return True
    decision = decide_restart(
        task.spec.restart, exit_code=task.exit_code, restarts_so_far=task.restarts
    )
    return not decision.restart


@dataclass(frozen=True)
class Derived:
    """What an allocation's tasks say: the status to move to (None: stay), and why."""

    status: AllocStatus | None
    reason: str = ""
    #: Tasks still live though the allocation ended (a sibling failed): stop them.
    leftovers: tuple[str, ...] = ()


def _describe(task: Task) -> str:
    code = f" (exit code {task.exit_code})" if task.exit_code is not None else ""
    why = f": {task.reason}" if task.reason else ""
    return f"task {task.name} {task.state.value}{code}{why}"


def derive_status(alloc: Allocation, tasks: Mapping[str, Task | None]) -> Derived:
    """The status ``alloc``'s tasks (name -> the manager's record, None: missing) imply.

    * stopped (``desired: stop``): Complete once every task has ended;
    * a task failed for good: Failed, and the others are leftovers to stop;
    * every task completed for good: Complete (a batch success; a service that ended);
    * every task running: Running.

    Anything else leaves the status as it is (starting, restarting in place). A status the
    table does not allow from the current one (Running -> Pending) is never proposed.
    """
    present = [t for t in tasks.values() if t is not None]
    if alloc.desired is AllocDesired.STOP:
        if all(t.is_terminal for t in present):
            return _move(alloc, AllocStatus.COMPLETE, f"stopped: {alloc.desired_reason}")
        return Derived(None)
    if not present or len(present) < len(tasks):
        return Derived(None)
    failed = [t for t in present if t.state is State.FAILED and ended_for_good(t)]
    if failed:
        live = tuple(t.id for t in present if not t.is_terminal)
        return _move(alloc, AllocStatus.FAILED, _describe(failed[0]), leftovers=live)
    if all(t.state is State.COMPLETED and ended_for_good(t) for t in present):
        return _move(alloc, AllocStatus.COMPLETE, "every task exited 0")
    if all(t.state is State.RUNNING for t in present):
        return _move(alloc, AllocStatus.RUNNING, "every task runs")
    return Derived(None)


def _move(
    alloc: Allocation, target: AllocStatus, reason: str, *, leftovers: tuple[str, ...] = ()
) -> Derived:
    if alloc.status is target or not can_alloc_transition(alloc.status, target):
        return Derived(None, leftovers=leftovers)
    return Derived(target, reason, leftovers)


def task_views(tasks: Iterable[Task]) -> dict[str, AllocTask]:
    """The allocation's record of its tasks (by name), as the manager last saw them."""
    return {
        t.name: AllocTask(id=t.id, state=t.state, exit_code=t.exit_code, restarts=t.restarts)
        for t in tasks
    }


def on_bad_node(alloc: Allocation, nodes: Mapping[str, Node]) -> bool:
    """Whether the allocation's tasks say nothing of it: its node is down or gone (or
    draining, while the allocation is still wanted).

    The manager ended those tasks itself; the reconciler marks the allocation lost or
    migrates it, which needs it as it was. A lost allocation stays Lost until its node is
    back and has stopped its tasks; a drained one is Complete once they stopped.
    """
    if alloc.node is None:
        return False
    node = nodes.get(alloc.node)
    if node is None or node.state is NodeState.DOWN:
        return True
    return alloc.desired is AllocDesired.RUN and (node.drain or node.state is NodeState.DRAINING)


def passed_over(taken: Iterable[str], *, avoid: str | None = None) -> set[str]:
    """The nodes a placement tries last: those that run one of the job's live allocations
    (``taken``), and ``avoid`` (the node of the allocation it replaces).

    The applier first places among the other nodes, then among every node: allocations
    of one job spread over the nodes when they can, and share one when they must.
    """
    return {*taken, *([avoid] if avoid else [])}
