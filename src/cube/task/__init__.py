"""The task: what users submit (spec), what Cube tracks (model), how it moves (state), and
whether its container is restarted (restart: decided alike by the worker, which restarts it,
and the manager, which tells from it whether a failure is final)."""

from cube.task.model import DesiredState, Health, PublishedPort, Task, TaskEvent, new_task_id
from cube.task.parse import parse_request
from cube.task.restart import RestartDecision, decide_restart
from cube.task.spec import (
    HealthCheck,
    PortMapping,
    Resources,
    RestartPolicy,
    RestartPolicyName,
    TaskRequest,
    TaskSpec,
)
from cube.task.specfile import load_spec_file
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
    "RestartDecision",
    "RestartPolicy",
    "RestartPolicyName",
    "State",
    "Task",
    "TaskEvent",
    "TaskRequest",
    "TaskSpec",
    "can_transition",
    "check_transition",
    "decide_restart",
    "load_spec_file",
    "new_task_id",
    "parse_request",
]
