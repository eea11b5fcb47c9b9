"""The manager's tasks: the records (the authority while the manager runs), saved first.

:class:`TaskRegistry` owns every task record, the index of tasks by node and the cache
of their JSON in task lists; nothing else changes those. A change of a task is *saved,
then published*: :meth:`TaskRegistry.change` applies the caller's edit to a draft (a
copy of the record), saves the draft through the store's one ordered path (on a thread
of its own for SQLite, so the event loop goes on meanwhile: see :mod:`cube.store.aio`),
and only once the store has it copies it into the record. So nobody sees a change that
a restart would lose: one the store refuses (a full disk) is dropped with its draft,
and the caller gets :class:`~cube.errors.StoreUnavailable`.

A save is awaited, so other coroutines run while it is under way; each change holds its
task's guard (:mod:`cube.manager.guards`) from reading the record to publishing it, so
the next change of the task starts from this one's result and is saved after it: an old
state never overwrites a newer one, in the records or in the store. An edit runs on the
record as it is when its turn comes, so it checks again what its caller decided on
(the task may have been stopped meanwhile) and returns None to change nothing.

It publishes two things, through the callbacks it is given: a node whose tasks changed
(the node registry builds that node's view again) and a change of an allocation's task
(the job service looks at the allocation again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from cube.background import spawn
from cube.errors import Conflict, NotFound, StoreUnavailable
from cube.log import get_logger
from cube.manager.guards import Guards
from cube.manager.lookup import find_task
from cube.store.aio import AsyncStore
from cube.task.model import Task, TaskEvent
from cube.task.state import State

log = get_logger("cube.manager")

#: Serialises the API's task lists straight from the manager's records.
_TASK = Task.__pydantic_serializer__
#: Left out of task lists (see TaskRegistry.tasks_json).
_NOT_LISTED = {"placement"}

#: A change of a task: edits the draft it is given and returns the events to record with
#: it (empty: a change without a new state), or None: nothing to change after all. It
#: assigns fields, and never changes a field's value in place: the draft is a shallow
#: copy of the record, sharing their values (a deep copy of a task with its placement
#: explanation cost 0.8 ms, more than the rest of a change).
Edit = Callable[[Task], Sequence[TaskEvent] | None]


class TaskRegistry:
    """Every task of the cluster, by ID, and by the node it is placed on."""

    def __init__(
        self,
        tasks: list[Task],
        store: AsyncStore,
        *,
        node_changed: Callable[[str | None], None],
        alloc_changed: Callable[[Task], None],
    ) -> None:
        """``tasks``: the store's, read once at start; ``store``: where every change goes."""
        self.store = store
        self._node_changed = node_changed
        self._alloc_changed = alloc_changed
        self.tasks: dict[str, Task] = {t.id: t for t in tasks}
        #: Node name -> IDs of the tasks whose ``node`` it is (kept by :meth:`_publish`): a
        #: complete report is checked against it, instead of against every task of the
        #: cluster (1,000 nodes x 10,000 tasks per collection pass, in bench/manager.py).
        #: (A dict as an ordered set: tasks move off a lost node in the order they came.)
        self._on_node: dict[str, dict[str, None]] = {}
        for task in self.tasks.values():
            if task.node is not None:
                self._on_node.setdefault(task.node, {})[task.id] = None
        #: Task ID -> its JSON in task lists, until it changes (see tasks_json).
        self._listed: dict[str, bytes] = {}
        #: One change of a task at a time (see the module docstring).
        self.guards = Guards()
        #: Changes nobody awaits (see :meth:`save` and :meth:`forget_later`).
        self._queued: set[asyncio.Task[Any]] = set()

    # --- changes: saved, then published ----------------------------------------------------------
    async def change(self, task: Task, edit: Edit) -> bool:
        """Change ``task`` by ``edit``: saved first, then shown (see the module docstring).

        Returns whether it changed (False: the edit found nothing to do, or the task was
        forgotten meanwhile). Raises StoreUnavailable if the store refused the change."""
        async with self.guards.hold(task.id):
            if self.tasks.get(task.id) is not task:
                return False  # forgotten while the change waited for its turn
            draft = task.model_copy()
            events = edit(draft)
            if events is None:
                return False
            await self.store.save_task(draft, events)
            self._publish(task, draft)
            return True

    async def create(self, task: Task, events: Sequence[TaskEvent]) -> tuple[Task, bool]:
        """Add a new task, saved first; or, if its ID is taken, the task that has it.

        Returns the record and whether it is new. The caller hands ``task`` over."""
        async with self.guards.hold(task.id):
            if (existing := self.tasks.get(task.id)) is not None:
                return existing, False
            await self.store.save_task(task, events)
            self.tasks[task.id] = task
            if task.node is not None:
                self._on_node.setdefault(task.node, {})[task.id] = None
            self._changed(task, None)
            return task, True

    async def forget(self, task_id: str) -> None:
        """Delete a task that ended and has no container left (a purged job's): from the
        store, then from the records and the lists, as ``nomad job stop -purge`` lets its
        garbage collector do. A task that may still run somewhere must be stopped first:
        a node that reports a task the manager does not know is left alone."""
        async with self.guards.hold(task_id):
            task = self.tasks.get(task_id)
            if task is None:
                return
            if not task.is_terminal or task.container_id is not None:
                raise Conflict(f"task {task_id} has not stopped yet")
            with contextlib.suppress(NotFound):
                await self.store.delete_task(task_id)
            self._index(task, None)
            del self.tasks[task_id]
            self._listed.pop(task_id, None)

    def forget_later(self, task_id: str) -> None:
        """:meth:`forget`, for a caller that does not await (the job service's passes).
        One the store refuses is logged, and the task stays: the job service asks again."""
        spawn(self.forget(task_id), f"forget task {task_id}", keep=self._queued)

    def save(self, task: Task, *events: TaskEvent) -> None:
        """Record a change the caller already made to the record ``task`` itself.

        The way of the job service for a task that has ended (marked not to run again,
        once the change of its allocation that stopped it is saved: see
        :mod:`cube.store.aio`), and of tests that play a node. The change is shown at
        once; its save is queued on the same path as every other change of the task (its
        guard, then the store's thread), and one the store refuses is undone when
        refused: the record goes back to what the store holds, and the refusal is logged.
        The node of a task is changed by :meth:`change` only."""
        self._changed(task, task.node)
        spawn(self._save_as_is(task, events), f"save task {task.id}", keep=self._queued)

    async def _save_as_is(self, task: Task, events: Sequence[TaskEvent]) -> None:
        async with self.guards.hold(task.id):
            if self.tasks.get(task.id) is not task:
                return
            try:
                # The record as it is now, which includes any change made since (a copy:
                # the store's thread reads it while the loop goes on and the caller may
                # assign its fields again).
                await self.store.save_task(task.model_copy(), events)
            except StoreUnavailable as exc:
                log.warning("a task change was refused; undone", task=task.id, error=exc.message)
                if (saved := await self.store.find_task(task.id)) is not None:
                    self._publish(task, saved)

    async def settled(self) -> None:
        """Wait for the changes nobody awaits (:meth:`save`, :meth:`forget_later`)."""
        while self._queued:
            await asyncio.gather(*self._queued, return_exceptions=True)

    def _publish(self, task: Task, draft: Task) -> None:
        """Show a saved change: the record takes the draft's fields (the record stays the
        same object: the dispatcher, a stop in flight, the job service hold it)."""
        previous = task.node
        if draft.node != previous:
            self._index(task, draft.node)
        for field in Task.model_fields:
            setattr(task, field, getattr(draft, field))
        self._changed(task, previous)

    def _changed(self, task: Task, previous: str | None) -> None:
        self._listed.pop(task.id, None)
        # Its state may have freed or taken resources there.
        self._node_changed(previous)
        self._node_changed(task.node)
        if task.alloc is not None:
            self._alloc_changed(task)  # its allocation's status may change

    def _index(self, task: Task, node: str | None) -> None:
        """Move ``task`` in the index of tasks by node (its ``node`` is set by the caller)."""
        if task.node is not None:
            self._on_node.get(task.node, {}).pop(task.id, None)
        if node is not None:
            self._on_node.setdefault(node, {})[task.id] = None

    # --- reads ------------------------------------------------------------------------------------
    def resolve(self, ref: str) -> Task:
        """The task with this ID, name or unique ID prefix (see :mod:`cube.manager.lookup`)."""
        return find_task(self.tasks, ref)

    def tasks_json(self, *, state: State | None = None, node: str | None = None) -> bytes:
        """The tasks as ``GET /v1/tasks`` lists them: without their placement explanation
        (more than half of each task's JSON; ``GET /v1/tasks/{id}`` has it), like Nomad's
        list stubs.

        Each task's JSON is kept until the task changes (every change drops it), so a
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

    def tasks_on(self, node: str) -> list[Task]:
        """The tasks placed on ``node`` (a copy of the list: callers may move them off)."""
        return [self.tasks[task_id] for task_id in self._on_node.get(node, ())]
