"""The in-memory store: plain dicts behind one lock, gone when the process exits.

Used by tests, simulations and ``--store memory``. Everything goes in and comes
out as a deep copy, so a caller that mutates a task it got (or saved) cannot
change what the store holds behind its back, just as with the SQLite store.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

from cube.errors import NotFound
from cube.node import Node
from cube.task.model import Task, TaskEvent
from cube.task.state import State


class MemoryStore:
    """A :class:`~cube.store.base.Store` kept in dicts; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        # Dicts keep insertion order, and replacing a key keeps its place: that is "oldest first".
        self._tasks: dict[str, Task] = {}
        self._events: dict[str, list[TaskEvent]] = {}
        self._nodes: dict[str, Node] = {}

    # --- tasks -----------------------------------------------------------------------------
    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        task = task.model_copy(deep=True)
        new_events = [event.model_copy(deep=True) for event in events]
        with self._lock:
            self._check_open()
            self._tasks[task.id] = task
            self._events.setdefault(task.id, []).extend(new_events)

    def get_task(self, task_id: str) -> Task:
        task = self.find_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    def find_task(self, task_id: str) -> Task | None:
        with self._lock:
            self._check_open()
            task = self._tasks.get(task_id)
            return None if task is None else task.model_copy(deep=True)

    def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]:
        wanted = None if states is None else frozenset(states)
        with self._lock:
            self._check_open()
            return [
                task.model_copy(deep=True)
                for task in self._tasks.values()
                if (node is None or task.node == node) and (wanted is None or task.state in wanted)
            ]

    def delete_task(self, task_id: str) -> None:
        with self._lock:
            self._check_open()
            if self._tasks.pop(task_id, None) is None:
                raise NotFound(f"task {task_id} not found")
            self._events.pop(task_id, None)

    def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None:
        new_events = [event.model_copy(deep=True) for event in events]
        with self._lock:
            self._check_open()
            if task_id not in self._tasks:
                raise NotFound(f"task {task_id} not found")
            self._events.setdefault(task_id, []).extend(new_events)

    def task_events(self, task_id: str) -> list[TaskEvent]:
        with self._lock:
            self._check_open()
            if task_id not in self._tasks:
                raise NotFound(f"task {task_id} not found")
            return [event.model_copy(deep=True) for event in self._events.get(task_id, [])]

    # --- nodes -----------------------------------------------------------------------------
    def save_node(self, node: Node) -> None:
        node = node.model_copy(deep=True)
        with self._lock:
            self._check_open()
            self._nodes[node.name] = node

    def get_node(self, name: str) -> Node:
        with self._lock:
            self._check_open()
            node = self._nodes.get(name)
            if node is None:
                raise NotFound(f"node {name} not found")
            return node.model_copy(deep=True)

    def list_nodes(self) -> list[Node]:
        with self._lock:
            self._check_open()
            return [self._nodes[name].model_copy(deep=True) for name in sorted(self._nodes)]

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._check_open()
            if self._nodes.pop(name, None) is None:
                raise NotFound(f"node {name} not found")

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop everything; later calls raise RuntimeError, as they do on a closed SqliteStore."""
        with self._lock:
            self._closed = True
            self._tasks.clear()
            self._events.clear()
            self._nodes.clear()

    def _check_open(self) -> None:
        """Called with the lock held."""
        if self._closed:
            raise RuntimeError("the store is closed")
