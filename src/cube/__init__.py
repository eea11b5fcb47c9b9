"""Cube: a small container orchestrator.

The components, one package each: :mod:`cube.task` (what users ask for and how it
moves), :mod:`cube.runtime` (containers), :mod:`cube.store` (persistence),
:mod:`cube.worker` (runs tasks on a node), :mod:`cube.scheduler` (picks a node),
:mod:`cube.manager` (keeps the desired state of the cluster), :mod:`cube.cli`.
"""

from cube.errors import (
    Conflict,
    ContainerError,
    CubeError,
    FieldError,
    IllegalTransition,
    InvalidSpec,
    NotFound,
    RuntimeUnavailable,
    Unavailable,
)
from cube.task import State, Task, TaskEvent, TaskRequest, TaskSpec

__all__ = [
    "Conflict",
    "ContainerError",
    "CubeError",
    "FieldError",
    "IllegalTransition",
    "InvalidSpec",
    "NotFound",
    "RuntimeUnavailable",
    "State",
    "Task",
    "TaskEvent",
    "TaskRequest",
    "TaskSpec",
    "Unavailable",
]
