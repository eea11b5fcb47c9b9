"""The manager's tasks: the records (the authority while the manager runs), saved through.

:class:`TaskRegistry` owns every task record, the index of tasks by node and the cache
of their JSON in task lists; nothing else changes those. Every change of a task goes
through :meth:`TaskRegistry.save`, which writes it to the store at once (a restarted
manager loses nothing) and undoes it if the store refuses.

It publishes two things, through the callbacks it is given: a node whose tasks changed
(the node registry builds that node's view again) and a change of an allocation's task
(the job service looks at the allocation again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from cube.errors import Conflict, NotFound, StoreUnavailable
from cube.manager.lookup import find_task
from cube.store.base import Store
from cube.task.model import Task, TaskEvent
from cube.task.state import State

#: Serialises the API's task lists straight from the manager's records.
_TASK = Task.__pydantic_serializer__
#: Left out of task lists (see TaskRegistry.tasks_json).
_NOT_LISTED = {"placement"}


class TaskRegistry:
    """Every task of the cluster, by ID, and by the node it is placed on."""

    def __init__(
        self,
        store: Store,
        *,
        node_changed: Callable[[str | None], None],
        alloc_changed: Callable[[Task], None],
    ) -> None:
        self.store = store
        self._node_changed = node_changed
        self._alloc_changed = alloc_changed
        self.tasks: dict[str, Task] = {t.id: t for t in store.list_tasks()}
        #: Node name -> IDs of the tasks whose ``node`` it is (kept by :meth:`assign`): a
        #: complete report is checked against it, instead of against every task of the
        #: cluster (1,000 nodes x 10,000 tasks per collection pass, in bench/manager.py).
        #: (A dict as an ordered set: tasks move off a lost node in the order they came.)
        self._on_node: dict[str, dict[str, None]] = {}
        for task in self.tasks.values():
            if task.node is not None:
                self._on_node.setdefault(task.node, {})[task.id] = None
        #: Task ID -> its JSON in task lists, until it changes (see tasks_json).
        self._listed: dict[str, bytes] = {}

    def add(self, task: Task) -> None:
        """A new task, saved already (see Manager.submit) or about to be (start_alloc_task)."""
        self.tasks[task.id] = task
        if task.node is not None:
            self._on_node.setdefault(task.node, {})[task.id] = None

    def forget(self, task_id: str) -> None:
        """Delete a task that ended and has no container left (a purged job's): from the
        records, the lists and the store, as ``nomad job stop -purge`` lets its garbage
        collector do. A task that may still run somewhere must be stopped first: a node
        that reports a task the manager does not know is left alone."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        if not task.is_terminal or task.container_id is not None:
            raise Conflict(f"task {task_id} has not stopped yet")
        with contextlib.suppress(NotFound):
            self.store.delete_task(task_id)
        self.assign(task, None)
        del self.tasks[task_id]
        self._listed.pop(task_id, None)

    def resolve(self, ref: str) -> Task:
        """The task with this ID, name or unique ID prefix (see :mod:`cube.manager.lookup`)."""
        return find_task(self.tasks, ref)

    def tasks_json(self, *, state: State | None = None, node: str | None = None) -> bytes:
        """The tasks as ``GET /v1/tasks`` lists them: without their placement explanation
        (more than half of each task's JSON; ``GET /v1/tasks/{id}`` has it), like Nomad's
        list stubs.

        Each task's JSON is kept until the task changes (:meth:`save` drops it), so a
        list of 10,000 mostly settled tasks is a join of cached bytes: serialising them
        all each time (after deep copies, at first) was most of the cost of the call.
        Nothing here awaits, so no record changes while the list is made.
        """
        listed = self._listed
        parts = []
        for task in self.select(state, node):
            part = listed.get(task.id)
            if part is None:
                part = listed[task.id] = _TASK.to_json(task, exclude=_NOT_LISTED)
            parts.append(part)
        if not parts:
            return b"[]"
        # The brackets go on the first and last parts: ``b"[" + joined + b"]"`` would copy
        # the whole list (7 MiB for 10,000 tasks) once more, a third of the call's time.
        parts[0] = b"[" + parts[0]
        parts[-1] += b"]"  # the same part as the first when there is one task
        return b",".join(parts)

    def select(self, state: State | None, node: str | None) -> list[Task]:
        return [
            t
            for t in self.tasks.values()
            if (state is None or t.state is state) and (node is None or t.node == node)
        ]

    def assign(self, task: Task, node: str | None) -> None:
        """Set the node a task is placed on (None: none), and the index of tasks by node."""
        if task.node is not None:
            self._on_node.get(task.node, {}).pop(task.id, None)
        self._node_changed(task.node)
        self._node_changed(node)
        task.node = node
        if node is not None:
            self._on_node.setdefault(node, {})[task.id] = None

    def tasks_on(self, node: str) -> list[Task]:
        """The tasks placed on ``node`` (a copy of the list: callers may move them off)."""
        return [self.tasks[task_id] for task_id in self._on_node.get(node, ())]

    def save(self, task: Task, *events: TaskEvent) -> None:
        """Record a change of ``task`` (every change of a task is saved at once)."""
        self._listed.pop(task.id, None)
        self._node_changed(task.node)  # its state may have freed or taken resources there
        try:
            self.store.save_task(task, events)
        except StoreUnavailable:
            self._restore(task)
            raise
        if task.alloc is not None:
            self._alloc_changed(task)  # its allocation's status may change

    def _restore(self, task: Task) -> None:
        """Undo the changes of ``task`` that the store refused: the record goes back to
        what was saved last, so the API never shows a change that a restart would lose."""
        saved = self.store.get_task(task.id)
        if saved.node != task.node:
            self.assign(task, saved.node)
        for field in Task.model_fields:
            setattr(task, field, getattr(saved, field))
        self._listed.pop(task.id, None)
        self._node_changed(task.node)
