"""What a worker may run when it cannot be sure its manager still wants it: the pure
decisions, with the clock passed in.

A worker is the source of truth for what runs, but the manager decides where tasks
run. Two moments put them at odds:

* **A return.** A worker that was away longer than the node timeout (killed, its
  machine rebooted) comes back to find that the manager moved its tasks elsewhere.
  Restarting a crashed container of such a task, or even keeping the one still
  running, would make two copies. So a worker that joins a manager starts and restarts
  nothing until the manager's answer to its join says which tasks are still its own
  (:func:`resume`): those it adopts or restarts as before; the others it stops.
* **A silence.** A worker that is alive but cut off from its manager (the manager
  paused, a partition) cannot know whether its tasks were moved. After
  ``--stop-after-disconnect`` seconds without a call from the manager, it stops them
  (:func:`should_stop_tasks`), like Nomad's ``stop_on_client_after``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from enum import StrEnum

from cube.task.model import DesiredState, Task
from cube.worker.runner import needs_runner


class Resume(StrEnum):
    """What a worker does with a task of its store once it knows its assignment."""

    SUPERVISE = "supervise"  # adopt its container, or (re)start it, as its runner decides
    STOP = "stop"  # the manager no longer places it here: stop its container, start nothing
    LEAVE = "leave"  # ended here, and its container is gone: nothing to do


def resume(task: Task, assigned: Collection[str] | None) -> Resume:
    """The step for ``task``, found in the store at start, given the IDs of the tasks
    the manager places on this node (``None``: no manager to ask, run what the store
    says)."""
    if not needs_runner(task):
        return Resume.LEAVE
    if assigned is None or task.id in assigned or task.desired is DesiredState.STOP:
        return Resume.SUPERVISE  # a task being stopped finishes stopping
    return Resume.STOP


def should_stop_tasks(last_heard: float, now: float, after: float | None) -> bool:
    """Whether a worker that last heard from its manager at ``last_heard`` must stop its
    tasks at ``now`` (both on one monotonic clock). ``after`` None or 0: never."""
    return bool(after) and now - last_heard >= (after or 0.0)


def announced_timeout(value: str | None) -> float | None:
    """The node timeout a manager's call announced (a header), if it is a usable one."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
