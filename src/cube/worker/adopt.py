"""Adoption: a (re)started worker takes back the containers that carry its labels.

Apart from :mod:`cube.worker.agent` because it runs once, before any runner or loop
exists, and needs nothing of the worker but its name, its engine and its store: it
matches containers with the store's tasks, rebuilds a task the store forgot from its
container's labels, and removes duplicates, so that a worker restart (even ``kill -9``)
neither loses nor duplicates a running task.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from cube.log import get_logger
from cube.runtime.base import (
    LABEL_SPEC,
    LABEL_TASK_ID,
    ContainerRuntime,
    ContainerSummary,
    alloc_from_labels,
    worker_selector,
)
from cube.store.base import Store
from cube.task.model import DesiredState, Task, TaskEvent
from cube.task.spec import RestartPolicy, TaskSpec
from cube.task.state import State

log = get_logger("cube.worker")


async def adopt(*, node: str, runtime: ContainerRuntime, store: Store) -> set[str]:
    """Match containers carrying ``node``'s labels with the tasks in the store.

    Returns the IDs of the tasks whose containers were found running (and meant to run).
    """
    adopted_running: set[str] = set()
    by_task: dict[str, list[ContainerSummary]] = {}
    for c in await runtime.list(worker_selector(node)):
        if LABEL_TASK_ID in c.labels:
            by_task.setdefault(c.labels[LABEL_TASK_ID], []).append(c)
    for task_id, containers in by_task.items():
        task = store.find_task(task_id) or _task_from_labels(
            task_id, containers[0], node=node, store=store
        )
        if task is None:
            continue
        keep = _pick_container(task, containers)
        for extra in containers:
            if extra.id != keep.id:
                log.warning("removing duplicate container", task=task_id, container=extra.id[:12])
                await runtime.remove(extra.id)
        task.container_id = keep.id
        task.node = node
        if keep.running and task.desired is DesiredState.RUN:
            adopted_running.add(task_id)
        events = []
        if task.state is State.PENDING:
            events.append(task.transition(State.SCHEDULED, "adopted by node " + node))
        if task.state is State.SCHEDULED and task.spec.health is None:
            events.append(task.transition(State.RUNNING, f"adopted container {keep.id[:12]}"))
        store.save_task(task, events)
        log.info("adopted container", task=task_id, container=keep.id[:12], node=node)
    return adopted_running


def _task_from_labels(
    task_id: str, container: ContainerSummary, *, node: str, store: Store
) -> Task | None:
    """Rebuild a task the store forgot (e.g. ``--store memory``) from its container's labels."""
    try:
        spec = TaskSpec.model_validate(json.loads(container.labels.get(LABEL_SPEC, "")))
    except (ValueError, ValidationError):
        log.warning(
            "container without a readable spec label left alone",
            container=container.id[:12],
            task=task_id,
        )
        return None
    reason = "rebuilt from labels"
    if spec.env_hidden:
        # Labels carry no env value: this container keeps the ones it was started with,
        # but a new one would get "<secret>". So it runs until it exits, and no longer.
        spec = spec.model_copy(update={"restart": RestartPolicy()})
        reason += " without env values (labels carry none): it will not be restarted"
    alloc = alloc_from_labels(container.labels)
    task = Task(id=task_id, spec=spec, node=node, alloc=alloc)
    store.save_task(task, [TaskEvent(state=State.PENDING, reason=reason)])
    return task


def _pick_container(task: Task, containers: list[ContainerSummary]) -> ContainerSummary:
    """The container to keep when several claim one task: the recorded one, else a running one."""
    for c in containers:
        if c.id == task.container_id:
            return c
    return next((c for c in containers if c.running), containers[0])
