"""A task record as the store suites save it (one builder for the contract and job suites)."""

from __future__ import annotations

from cube.task.model import Task
from cube.task.spec import TaskSpec


def make_task(name: str = "web", *, node: str | None = None) -> Task:
    return Task(spec=TaskSpec(name=name, image="cube-busybox"), node=node)
