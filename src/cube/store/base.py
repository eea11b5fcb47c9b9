"""The store seam: where tasks, their events and nodes are kept.

Two implementations ship side by side: :class:`~cube.store.memory.MemoryStore`
(tests, simulations, ``--store memory``) and :class:`~cube.store.sqlite.SqliteStore`
(the default; survives restarts). One contract test suite runs against both.

The interface is synchronous on purpose: both stores answer in microseconds on a
local disk, and a synchronous API keeps transactions obvious. Every method is
safe to call from several threads at once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from cube.node import Node
from cube.task.model import Task, TaskEvent
from cube.task.state import State


class Store(Protocol):
    # --- tasks -----------------------------------------------------------------------------
    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        """Insert or replace ``task`` and append ``events`` to its history, atomically."""

    def get_task(self, task_id: str) -> Task:
        """The task with this ID; raises :class:`cube.errors.NotFound`."""

    def find_task(self, task_id: str) -> Task | None:
        """The task with this ID, or None."""

    def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]:
        """Tasks, oldest first, optionally only those on ``node`` and/or in ``states``."""

    def delete_task(self, task_id: str) -> None:
        """Forget a task and its events; raises NotFound if unknown."""

    def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None:
        """Append to a task's history without rewriting the task; raises NotFound if unknown."""

    def task_events(self, task_id: str) -> list[TaskEvent]:
        """A task's history, oldest first; raises NotFound if unknown."""

    # --- nodes -----------------------------------------------------------------------------
    def save_node(self, node: Node) -> None:
        """Insert or replace a node, by name."""

    def get_node(self, name: str) -> Node:
        """The node with this name; raises NotFound."""

    def list_nodes(self) -> list[Node]:
        """Every node, by name."""

    def delete_node(self, name: str) -> None:
        """Forget a node; raises NotFound if unknown."""

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release files and connections. The store is unusable afterwards."""
