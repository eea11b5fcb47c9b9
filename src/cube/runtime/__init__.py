"""Container runtimes: the interface, the Docker engine, and an in-memory fake."""

from cube.runtime.base import (
    LABEL_MANAGED_BY,
    LABEL_SPEC,
    LABEL_TASK_ID,
    LABEL_TASK_NAME,
    LABEL_WORKER,
    MANAGED_BY,
    ContainerConfig,
    ContainerInfo,
    ContainerRuntime,
    ContainerStats,
    ContainerSummary,
    NetworkSummary,
    task_labels,
    worker_selector,
)
from cube.runtime.docker import DockerRuntime
from cube.runtime.fake import FakeRuntime

__all__ = [
    "LABEL_MANAGED_BY",
    "LABEL_SPEC",
    "LABEL_TASK_ID",
    "LABEL_TASK_NAME",
    "LABEL_WORKER",
    "MANAGED_BY",
    "ContainerConfig",
    "ContainerInfo",
    "ContainerRuntime",
    "ContainerStats",
    "ContainerSummary",
    "DockerRuntime",
    "FakeRuntime",
    "NetworkSummary",
    "task_labels",
    "worker_selector",
]
