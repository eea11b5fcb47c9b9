"""What a task's container is on a worker: its name, its configuration, and how one is
created and started.

Apart from :mod:`cube.worker.runner`, which decides *when* a container starts, stops or
restarts: the runner and an allocation's launcher (:mod:`cube.worker.alloc_runner`,
which starts it on the allocation's network) both build on these, and tests read a
task's container configuration without a runner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cube.runtime.base import (
    ContainerConfig,
    ContainerInfo,
    ContainerRuntime,
    ProgressCallback,
    task_labels,
)
from cube.task.model import Task
from cube.task.spec import FOR_LABELS


def container_name(task: Task, node: str) -> str:
    # Names are unique per Docker engine and workers may share one: the copy a lost worker
    # still runs must not block the task's new copy on another worker of the same engine.
    return f"cube-{task.spec.name}-{task.id[:8]}-{node}"


def container_config(task: Task, node: str) -> ContainerConfig:
    spec = task.spec
    return ContainerConfig(
        name=container_name(task, node),
        image=spec.image,
        command=list(spec.command),
        env=spec.env_values(),
        labels={
            **spec.labels,
            **task_labels(
                task_id=task.id,
                task_name=spec.name,
                worker=node,
                spec_json=spec.model_dump_json(context=FOR_LABELS),  # no env value
            ),
        },
        ports=list(spec.ports),
        cpu=spec.resources.cpu,
        memory=spec.resources.memory,
        privileged=spec.privileged,
        network=spec.network,
        mounts=list(spec.mounts),
    )


#: Creates and starts a container from its config, reporting progress.
Launch = Callable[[ContainerConfig, ProgressCallback | None], Awaitable[ContainerInfo]]


def run_on(runtime: ContainerRuntime) -> Launch:
    async def launch(
        config: ContainerConfig, on_progress: ProgressCallback | None
    ) -> ContainerInfo:
        return await runtime.run(config, on_progress=on_progress)

    return launch
