"""The worker agent: runs the tasks placed on this node as containers.

It keeps one :class:`~cube.worker.runner.TaskRunner` per task it supervises and
three background loops:

* exits: Docker ``die`` events, so a crash is noticed at once;
* poll: a container listing every ``poll_interval`` seconds, the level-triggered
  safety net for anything an event stream can miss (an engine restart, say);
* metrics: a machine sample every ``stats_interval`` seconds.

On start it adopts the containers that carry its labels, so a worker restart
(even ``kill -9``) neither loses nor duplicates a running task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Collection
from typing import Any

from pydantic import ValidationError

from cube.background import cancel_all, spawn
from cube.errors import Conflict, FieldError, InvalidSpec, NotFound, RuntimeUnavailable
from cube.log import get_logger
from cube.node import MachineStats, NodeReport, Resources
from cube.runtime.base import (
    LABEL_SPEC,
    LABEL_TASK_ID,
    ContainerRuntime,
    ContainerSummary,
    worker_selector,
)
from cube.store.base import Store
from cube.task.model import DesiredState, Task, TaskEvent
from cube.task.spec import Privilege, RestartPolicy, TaskRequest, TaskSpec, privileges
from cube.task.state import State
from cube.worker.changes import ChangeFeed, TaskChanges
from cube.worker.health import Prober, probe
from cube.worker.metrics import MachineSampler
from cube.worker.runner import TaskRunner, needs_runner

log = get_logger("cube.worker")

#: Containers being created and started at once. Docker serialises most of a start
#: (measured on 2 cores: 100 containers take as long 4, 16 or 100 at a time), so more in
#: flight would only cost this process CPU (and the engine some) that the starts need.
START_CONCURRENCY = max(8, 2 * (os.cpu_count() or 1))


class Worker:
    def __init__(
        self,
        *,
        name: str,
        runtime: ContainerRuntime,
        store: Store,
        capacity: Resources,
        sampler: MachineSampler | None = None,
        labels: dict[str, str] | None = None,
        poll_interval: float = 1.0,
        stats_interval: float = 2.0,
        prober: Prober = probe,
        allow: Collection[Privilege] = (),
        start_concurrency: int = START_CONCURRENCY,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.store = store
        self.capacity = capacity
        self.labels = labels or {}
        self.sampler = sampler
        self.poll_interval = poll_interval
        self.stats_interval = stats_interval
        self.prober = prober
        self.allow = frozenset(allow)
        self.runners: dict[str, TaskRunner] = {}
        self._starts = asyncio.Semaphore(start_concurrency)
        #: Every recorded change of a task, for the manager's blocking queries.
        self.feed = ChangeFeed()
        self._runner_tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stats = MachineStats()

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt this node's containers, resume supervision, start the background loops."""
        await self.runtime.ping()
        await self._adopt()
        for task in self.store.list_tasks(node=self.name):
            if task.id not in self.runners and needs_runner(task):
                self._supervise(task)
        self._sample()
        self._loops = [
            spawn(self._exits_loop(), "exits"),
            spawn(self._poll_loop(), "poll"),
            spawn(self._metrics_loop(), "metrics"),
        ]
        log.info("worker started", node=self.name, tasks=len(self.runners))

    async def close(self) -> None:
        """Stop supervising. Containers keep running; the next start adopts them."""
        await cancel_all([*self._loops, *self._runner_tasks])
        self._loops.clear()
        log.info("worker stopped; task containers left running for adoption", node=self.name)

    # --- the API's verbs -----------------------------------------------------------------------
    def submit(self, request: TaskRequest) -> tuple[Task, bool]:
        """Accept a task. Returns (task, created); the same ID and spec again is a no-op."""
        spec = request.spec()
        self._check_allowed(spec)
        fresh = True  # never here before: no container of it to look for on its first start
        if request.id is not None:
            existing = (
                self.runners[request.id].task
                if request.id in self.runners
                else (self.store.find_task(request.id))
            )
            if existing is not None:
                if existing.spec != spec:
                    raise Conflict(f"task {request.id} exists with a different spec")
                if existing.desired is DesiredState.RUN:
                    return existing.model_copy(deep=True), False
                if request.id in self.runners:
                    raise Conflict(f"task {request.id} is still stopping on {self.name}; retry")
                # It was stopped here (moved away, drained) and is now placed here again:
                # a new attempt, with a fresh record the manager reads from the start.
                self.store.delete_task(request.id)
                fresh = False
        task = (
            Task(spec=spec, node=self.name)
            if request.id is None
            else Task(id=request.id, spec=spec, node=self.name)
        )
        event = TaskEvent(
            state=State.PENDING, reason=f"submitted to node {self.name}", node=self.name
        )
        self.store.save_task(task, [event])
        self.feed.changed(task.id)
        log.info("task accepted", task=task.id, name=spec.name, node=self.name)
        self._supervise(task, fresh=fresh)
        return task.model_copy(deep=True), True

    def _check_allowed(self, spec: TaskSpec) -> None:
        """Refuse what this node's operator did not allow, naming the field and the flag."""
        fields = {
            Privilege.PRIVILEGED: "privileged",
            Privilege.HOST_NETWORK: "network",
            Privilege.HOST_MOUNTS: "mounts",
        }
        problems = [
            FieldError(
                fields[p],
                f"not allowed on node {self.name} "
                f"(its operator can start it with --allow {p.value})",
            )
            for p in sorted(privileges(spec) - self.allow)
        ]
        if problems:
            raise InvalidSpec(problems)

    async def stop(self, task_id: str, *, wait: bool = True) -> Task:
        """Ask for a task to stop; with ``wait``, return once its container is gone."""
        runner = self.runners.get(task_id)
        task = runner.task if runner else self.store.get_task(task_id)
        task.desired = DesiredState.STOP
        self.store.save_task(task)
        self.feed.changed(task_id)
        if runner is None or runner.done.is_set():
            runner = self._supervise(task)
        runner.notify()
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.done.wait(), task.spec.stop_timeout + 15.0)
        return self.get(task_id)

    def get(self, task_id: str) -> Task:
        runner = self.runners.get(task_id)
        if runner is not None:
            return runner.task.model_copy(deep=True)
        return self.store.get_task(task_id)

    def list_tasks(self) -> list[Task]:
        live = {tid: r.task for tid, r in self.runners.items()}
        return [
            live[t.id].model_copy(deep=True) if t.id in live else t for t in self.store.list_tasks()
        ]

    async def changes(self, since: str | None, *, wait: float) -> TaskChanges:
        """A blocking query: the tasks changed after index ``since`` and their histories,
        as soon as there is a change or after ``wait`` seconds.

        Without ``since``, or with an index from before this worker started, every task.
        """
        changed = await self.feed.since(since, wait=wait) if since is not None else None
        tasks: list[Task] = []
        if changed is None:
            tasks = self.list_tasks()
        for task_id in changed or ():
            runner = self.runners.get(task_id)
            task = runner.task.model_copy(deep=True) if runner else self.store.find_task(task_id)
            if task is not None:
                tasks.append(task)
        # No await from the listing to here: the index, tasks and histories are one moment's.
        return TaskChanges(
            index=self.feed.index,
            complete=changed is None,
            tasks=tasks,
            events={t.id: self.store.task_events(t.id) for t in tasks},
        )

    def events(self, task_id: str) -> list[TaskEvent]:
        return self.store.task_events(task_id)

    async def logs(self, task_id: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        task = self.get(task_id)
        if not task.container_id:
            raise NotFound(f"task {task_id} has no container (state {task.state.title})")
        async for chunk in self.runtime.logs(task.container_id, tail=tail, follow=follow):
            yield chunk

    def report(self) -> NodeReport:
        holding = [r.task for r in self.runners.values() if r.holds_resources]
        allocated = Resources()
        for t in holding:
            r = t.spec.resources
            allocated += Resources(cpu=r.cpu, memory=r.memory, disk=r.disk)
        return NodeReport(
            name=self.name,
            capacity=self.capacity,
            allocated=allocated,
            labels=self.labels,
            used_ports=sorted({p.host for t in holding for p in t.spec.ports if p.host}),
            tasks=len(holding),
            allows=sorted(p.value for p in self.allow),
            stats=self._stats,
        )

    # --- supervision ---------------------------------------------------------------------------
    def _supervise(self, task: Task, *, fresh: bool = False) -> TaskRunner:
        runner = TaskRunner(
            task,
            node=self.name,
            runtime=self.runtime,
            store=self.store,
            prober=self.prober,
            on_change=self.feed.changed,
            fresh=fresh,
            starts=self._starts,
        )
        self.runners[task.id] = runner

        async def run() -> None:
            try:
                await runner.run()
            finally:
                if self.runners.get(task.id) is runner:
                    del self.runners[task.id]

        spawn(run(), f"task {task.id}", keep=self._runner_tasks)
        return runner

    async def _adopt(self) -> None:
        """Match containers carrying this worker's labels with the tasks in the store."""
        by_task: dict[str, list[ContainerSummary]] = {}
        for c in await self.runtime.list(worker_selector(self.name)):
            if LABEL_TASK_ID in c.labels:
                by_task.setdefault(c.labels[LABEL_TASK_ID], []).append(c)
        for task_id, containers in by_task.items():
            task = self.store.find_task(task_id) or self._task_from_labels(task_id, containers[0])
            if task is None:
                continue
            keep = _pick_container(task, containers)
            for extra in containers:
                if extra.id != keep.id:
                    log.warning(
                        "removing duplicate container", task=task_id, container=extra.id[:12]
                    )
                    await self.runtime.remove(extra.id)
            task.container_id = keep.id
            task.node = self.name
            events = []
            if task.state is State.PENDING:
                events.append(task.transition(State.SCHEDULED, "adopted by node " + self.name))
            if task.state is State.SCHEDULED and task.spec.health is None:
                events.append(task.transition(State.RUNNING, f"adopted container {keep.id[:12]}"))
            self.store.save_task(task, events)
            log.info("adopted container", task=task_id, container=keep.id[:12], node=self.name)

    def _task_from_labels(self, task_id: str, container: ContainerSummary) -> Task | None:
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
        task = Task(id=task_id, spec=spec, node=self.name)
        self.store.save_task(task, [TaskEvent(state=State.PENDING, reason=reason)])
        return task

    # --- background loops ----------------------------------------------------------------------
    def _notify_container(self, container_id: str) -> None:
        woken = [r for r in self.runners.values() if r.task.container_id == container_id]
        if not woken:
            # Perhaps a container whose start is not recorded yet: wake the runners starting
            # one, so that they ask the engine instead of trusting the answer to the start.
            woken = [r for r in self.runners.values() if r.task.container_id is None]
        for runner in woken:
            runner.notify()

    async def _exits_loop(self) -> None:
        while True:
            try:
                async for container_id in self.runtime.exits(worker_selector(self.name)):
                    self._notify_container(container_id)
            except RuntimeUnavailable as exc:
                log.warning("event stream lost, reconnecting", node=self.name, error=exc.message)
            await asyncio.sleep(self.poll_interval)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                running = {
                    c.id for c in await self.runtime.list(worker_selector(self.name)) if c.running
                }
            except RuntimeUnavailable:
                continue  # the runners retry on their own; the exits loop logs the outage
            for runner in list(self.runners.values()):
                if runner.task.state is State.RUNNING and runner.task.container_id not in running:
                    runner.notify()

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            self._sample()

    def _sample(self) -> None:
        if self.sampler is not None:
            running = sum(1 for r in self.runners.values() if r.task.state is State.RUNNING)
            self._stats = self.sampler.sample(tasks_running=running)


def _pick_container(task: Task, containers: list[ContainerSummary]) -> ContainerSummary:
    """The container to keep when several claim one task: the recorded one, else a running one."""
    for c in containers:
        if c.id == task.container_id:
            return c
    return next((c for c in containers if c.running), containers[0])
