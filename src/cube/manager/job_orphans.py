"""Tasks whose allocation is gone: stopped, then forgotten once they have stopped.

A purge forgets a job's allocations at once, but their tasks run until their nodes stop
them, and a manager that crashed between saving a task and its allocation knows a task
of no allocation. Nomad's garbage collector does the same after ``nomad job stop
-purge``: once stopped, ``cube status`` lists them no more. A task that had ended before
the purge (a batch job's, complete) still has its exited container on its node: the
node is asked to remove it, then the task is forgotten too. Kept apart from the pass
because it is the one set of task IDs the job service owns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cube.background import spawn
from cube.manager.job_records import JobRecords
from cube.task.model import DesiredState

if TYPE_CHECKING:
    from cube.manager.core import Manager


class Orphans:
    """IDs of tasks whose allocation was purged or is unknown; see the module docstring."""

    def __init__(
        self,
        manager: Manager,
        records: JobRecords,
        stop_task: Callable[[str, str], None],
        background: set[asyncio.Task[Any]],
    ) -> None:
        self.manager = manager
        self.records = records
        self._stop_task = stop_task
        self._background = background
        self._ids: set[str] = set()
        #: Ended tasks whose node is asked to remove their container (one call at a time).
        self._removing: dict[str, asyncio.Task[Any]] = {}

    def add(self, task_ids: Iterable[str]) -> None:
        self._ids.update(task_ids)

    def stop_unknown(self) -> None:
        """Stop tasks whose allocation is unknown (purged, or a crash before it was saved),
        and forget them once stopped (a manager restarted during a purge)."""
        for task in list(self.manager.tasks.values()):
            if task.alloc is None or task.alloc.id in self.records.allocs:
                continue
            self._ids.add(task.id)
            if not task.is_terminal and task.desired is DesiredState.RUN:
                self._stop_task(task.id, f"its allocation {task.alloc.name} is gone")

    def forget_stopped(self) -> None:
        """Forget the tasks of purged allocations that have stopped. One whose container
        may still run (its node was lost) stays until its node comes back and stops it:
        forgotten now, a copy there would be nobody's to stop."""
        for task_id in list(self._ids):
            task = self.manager.tasks.get(task_id)
            if task is None or (task.alloc is not None and task.alloc.id in self.records.allocs):
                self._ids.discard(task_id)
                self._removing.pop(task_id, None)
            elif task.is_terminal and task.container_id is None:
                self.manager.forget(task_id)
                self._ids.discard(task_id)
                self._removing.pop(task_id, None)
            elif task.is_terminal and task.node is not None:
                self._remove_container(task_id)

    def _remove_container(self, task_id: str) -> None:
        """Ask the task's node to remove the container of a task that ended before the
        purge (a stop of an ended task removes its container and keeps its end); a node
        that does not answer is asked again by a later pass."""
        calling = self._removing.get(task_id)
        if calling is not None and not calling.done():
            return
        call = self.manager.stop(task_id, reason="its job was purged")
        self._removing[task_id] = spawn(
            call, "remove a purged task's container", keep=self._background
        )
