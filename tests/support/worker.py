"""An in-process worker's pieces the worker tests share: requests, restart policies, a store
that fills up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cube.errors import StoreFull
from cube.store.memory import MemoryStore
from cube.task.model import Task, TaskEvent
from cube.task.spec import TaskRequest
from tests.support.engine import IMAGE


def request(name: str = "web", **fields: Any) -> TaskRequest:
    return TaskRequest.model_validate({"name": name, "image": IMAGE, **fields})


def restart(policy: str, max_attempts: int | None = None, delay: float = 0.01) -> dict[str, Any]:
    return {"policy": policy, "max_attempts": max_attempts, "delay": delay}


class FullStore(MemoryStore):
    """A MemoryStore whose writes fail while ``full`` is set, as on a full disk."""

    full = False

    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        if self.full:
            raise StoreFull("cannot save: disk full at /data/cube.db")
        super().save_task(task, events)
