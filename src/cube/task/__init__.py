"""The task: what users submit (spec), what Cube tracks (model), how it moves (state)."""

from cube.task.model import DesiredState, Health, PublishedPort, Task, TaskEvent, new_task_id
from cube.task.spec import (
    HealthCheck,
    PortMapping,
    Resources,
    RestartPolicy,
    RestartPolicyName,
    TaskRequest,
    TaskSpec,
    load_spec_file,
    parse_request,
)
from cube.task.state import TERMINAL, TRANSITIONS, State, can_transition, check_transition

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "DesiredState",
    "Health",
    "HealthCheck",
    "PortMapping",
    "PublishedPort",
    "Resources",
    "RestartPolicy",
    "RestartPolicyName",
    "State",
    "Task",
    "TaskEvent",
    "TaskRequest",
    "TaskSpec",
    "can_transition",
    "check_transition",
    "load_spec_file",
    "new_task_id",
    "parse_request",
]
