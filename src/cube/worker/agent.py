"""The worker agent: runs the tasks placed on this node as containers.

It keeps one :class:`~cube.worker.runner.TaskRunner` per task it supervises and
four background loops (exits, poll, metrics, disconnect: :mod:`cube.worker.loops`).

On start it adopts the containers that carry its labels (:mod:`cube.worker.adopt`), so
a worker restart (even ``kill -9``) neither loses nor duplicates a running task. A
worker that joins a manager (``wait_for_assignment``) then starts and restarts nothing
until the answer to its join says which of its tasks are still its own
(:meth:`Worker.joined`).
The tasks of a job allocation share one :class:`~cube.worker.alloc_runner.AllocRunner`
(their network); once supervision resumes, the networks of live allocations are adopted
and this worker's others removed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Collection
from functools import partial
from typing import Any

from cube.background import Supervisor, cancel_all, spawn, wait_event
from cube.errors import Conflict, FieldError, InvalidSpec, NotFound
from cube.log import get_logger
from cube.metrics.worker import WorkerTelemetry
from cube.node import MachineStats, Resources
from cube.protocol import JoinAnswer, NodeReport, TaskChanges
from cube.runtime.base import ContainerRuntime
from cube.store.base import Store
from cube.task.model import STOPPED_BY_USER, DesiredState, Task, TaskEvent
from cube.task.spec import Privilege, TaskRequest, TaskSpec, privileges
from cube.task.state import State
from cube.worker import loops
from cube.worker.adopt import adopt
from cube.worker.alloc_runner import Allocations, AllocRunner
from cube.worker.authority import Resume, resume
from cube.worker.changes import ChangeFeed
from cube.worker.engine import EngineWatch
from cube.worker.health import Prober, probe
from cube.worker.metrics import MachineSampler
from cube.worker.ports import HostPorts
from cube.worker.runner import TaskRunner

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
        wait_for_assignment: bool = False,
        stop_after_disconnect: float | None = None,
        host_ports: HostPorts | None = None,
        change_window: float = 0.0,
    ) -> None:
        """``change_window``: seconds a blocking query woken by a change waits for more
        (see :mod:`cube.worker.changes`). ``wait_for_assignment``: this worker joins a
        manager, and must not start or restart any task of its store before :meth:`joined`
        says it is still its own. ``stop_after_disconnect``: seconds without a call from
        the manager after which every task is stopped (None: the node timeout the manager
        tells, at its join and with every call; none told yet: never)."""
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
        #: The job allocations whose tasks run here, and their networks.
        self.allocs = Allocations(
            node=name, runtime=runtime, ports=host_ports or HostPorts(), live=self._runs
        )
        self._starts = asyncio.Semaphore(start_concurrency)
        #: Every recorded change of a task, for the manager's blocking queries.
        self.feed = ChangeFeed(window=change_window)
        self._runner_tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        #: Runs the loops and the task runners, and starts one that crashed again (a full
        #: disk under the store): see GET /v1/health.
        self.loops = Supervisor("worker")
        self._stats = MachineStats()
        #: Host ports taken on the machine by any process, as last sampled.
        self._ports_in_use: set[int] = set()
        #: When this worker lost its engine and got it back: runners ask before counting.
        self.engine = EngineWatch()
        #: Waiting for the manager's word on which tasks of the store are still ours.
        self.awaiting_assignment = wait_for_assignment
        self.stop_after_disconnect = stop_after_disconnect
        self._stop_after_given = stop_after_disconnect is not None
        #: When the manager last called (time.monotonic()); see heard().
        self.last_heard = time.monotonic()
        #: The tasks were stopped for the manager's silence, and it has not called since.
        self._cut_off = False
        #: IDs of the tasks whose containers were found running at start (see adopt()).
        self._adopted_running: set[str] = set()
        #: Its metrics (GET /metrics): its tasks read at scrape time, and these hooks.
        self.telemetry = WorkerTelemetry(self, name=name)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt this node's containers, resume supervision, start the background loops."""
        await self.runtime.ping()
        self._adopted_running |= await adopt(node=self.name, runtime=self.runtime, store=self.store)
        if self.awaiting_assignment:
            log.info(
                "waiting for the manager to say which tasks are still this node's; "
                "running containers are kept, nothing is started until then",
                node=self.name,
            )
        else:
            self._resume(None)
        self.last_heard = time.monotonic()
        self._sample()
        self._loops = [
            self.loops.start("exits", partial(loops.exits_loop, self)),
            self.loops.start("poll", partial(loops.poll_loop, self)),
            self.loops.start("disconnect", partial(loops.disconnect_loop, self)),
        ]
        if self.sampler is not None:  # nothing to sample otherwise: no timer (a fleet has 5,000)
            self._loops.append(self.loops.start("metrics", partial(loops.metrics_loop, self)))
        log.info("worker started", node=self.name, tasks=len(self.runners))

    def joined(self, answer: JoinAnswer) -> None:
        """The manager accepted this worker's join: supervise the tasks it still places
        here, stop the others, and take its node timeout as the disconnect window unless
        one was given."""
        self.heard()
        if not self._stop_after_given:
            self.stop_after_disconnect = answer.node_timeout
        if self.awaiting_assignment:
            self.awaiting_assignment = False
            self._resume(frozenset(answer.tasks))

    def adopted_running(self) -> list[str]:
        """The tasks whose running containers this worker adopted and has not yet been
        told about: its join says so, and the manager takes back those it has not placed
        elsewhere meanwhile."""
        return sorted(self._adopted_running) if self.awaiting_assignment else []

    def _resume(self, assigned: frozenset[str] | None) -> None:
        """Supervise the store's tasks again; with the manager's ``assigned`` IDs, stop
        those it placed elsewhere (or stopped) while this worker was away."""
        for task in self.store.list_tasks(node=self.name):
            if task.id in self.runners:  # the manager already sent or stopped it
                continue
            step = resume(task, assigned)
            if step is Resume.SUPERVISE:
                self._supervise(task)
            elif step is Resume.STOP:
                log.warning("task no longer placed here; stopping it", task=task.id)
                self._request_stop(task.id, "stopped: its manager placed it elsewhere")
        # Only now: an allocation's network is kept while one of its tasks has a runner.
        spawn(self.allocs.adopt_networks(), "adopt networks", keep=self._runner_tasks)

    def heard(self, *, node_timeout: float | None = None) -> None:
        """The manager called (its API calls reach this worker through :func:`create_app`),
        telling the node timeout in force, which is the disconnect window unless one was
        given: it grows with the fleet, and so do the gaps between the manager's calls."""
        self.last_heard = time.monotonic()
        if node_timeout is not None and not self._stop_after_given:
            self.stop_after_disconnect = node_timeout
        if self._cut_off:
            self._cut_off = False
            log.info("the manager is calling again", node=self.name)

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
                if existing.alloc != request.alloc:
                    raise Conflict(f"task {request.id} exists in another allocation")
                if existing.desired is DesiredState.RUN:
                    return existing.model_copy(deep=True), False
                if request.id in self.runners:
                    raise Conflict(f"task {request.id} is still stopping on {self.name}; retry")
                # It was stopped here (moved away, drained) and is now placed here again:
                # a new attempt, with a fresh record the manager reads from the start.
                self.store.delete_task(request.id)
                fresh = False
        task = (
            Task(spec=spec, node=self.name, alloc=request.alloc)
            if request.id is None
            else Task(id=request.id, spec=spec, node=self.name, alloc=request.alloc)
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

    async def stop(self, task_id: str, *, wait: bool = True, reason: str | None = None) -> Task:
        """Ask for a task to stop; with ``wait``, return once its container is gone.

        ``reason``: recorded as the reason of its end (the manager says why: a job
        scaled down, stopped, updated...); "stopped by user" if not given."""
        runner = self._request_stop(task_id, reason or STOPPED_BY_USER)
        task = runner.task
        if wait:
            await wait_event(runner.done, task.spec.stop_timeout + 15.0)
            if task.alloc is not None and runner.done.is_set():
                # The allocation's last task gone: its network goes before the answer.
                await self.allocs.release(task.alloc.id)
        return self.get(task_id)

    def _request_stop(self, task_id: str, reason: str) -> TaskRunner:
        """Mark a task to stop, its end to be recorded with ``reason``; returns its runner."""
        runner = self.runners.get(task_id)
        task = runner.task if runner else self.store.get_task(task_id)
        # Saved before the runner sees it: a stop the store refused (a full disk) is not made.
        stopping = {"desired": DesiredState.STOP, "desired_reason": reason}
        self.store.save_task(task.model_copy(update=stopping))
        task.desired, task.desired_reason = DesiredState.STOP, reason
        self.feed.changed(task_id)
        if runner is None or runner.done.is_set():
            runner = self._supervise(task)
        runner.stop_reason = reason
        runner.notify()
        return runner

    def get(self, task_id: str) -> Task:
        runner = self.runners.get(task_id)
        if runner is not None:
            return runner.task.model_copy(deep=True)
        return self.store.get_task(task_id)

    def list_tasks(self) -> list[Task]:
        return [t.model_copy(deep=True) if t.id in self.runners else t for t in self._all_tasks()]

    def _all_tasks(self) -> list[Task]:
        """Every task, the runners' own records for those supervised (not copies)."""
        live = {tid: r.task for tid, r in self.runners.items()}
        return [live.get(t.id, t) for t in self.store.list_tasks()]

    async def changes(self, since: str | None, *, wait: float) -> TaskChanges:
        """A blocking query: the tasks changed after index ``since`` and their histories,
        as soon as there is a change or after ``wait`` seconds.

        Without ``since``, or with an index from before this worker started, every task.
        """
        answer = await self._changes(since, wait=wait)
        return answer.model_copy(update={"tasks": [t.model_copy(deep=True) for t in answer.tasks]})

    async def changes_json(self, since: str | None, *, wait: float) -> bytes:
        """:meth:`changes`, serialised at once: the live task records are read as they
        are, not copied first (a third of a simulated fleet's time in its answers went
        to those copies, py-spy)."""
        return (await self._changes(since, wait=wait)).model_dump_json().encode()

    async def _changes(self, since: str | None, *, wait: float) -> TaskChanges:
        """The answer, holding the runners' own task records: read it before any await."""
        changed = await self.feed.since(since, wait=wait) if since is not None else None
        tasks: list[Task] = []
        if changed is None:
            tasks = self._all_tasks()
        for task_id in changed or ():
            runner = self.runners.get(task_id)
            task = runner.task if runner else self.store.find_task(task_id)
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

    async def logs(
        self, task_id: str, *, tail: int | None, follow: bool, since: float | None = None
    ) -> AsyncIterator[bytes]:
        task = self.get(task_id)
        if not task.container_id:
            raise NotFound(f"task {task_id} has no container (state {task.state.title})")
        chunks = self.runtime.logs(task.container_id, tail=tail, follow=follow, since=since)
        async for chunk in chunks:
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
            ports_in_use=sorted(self._ports_in_use | self._published()),
            tasks=len(holding),
            allows=sorted(p.value for p in self.allow),
            stats=self._stats,
        )

    def _published(self) -> set[int]:
        """Host ports its live containers publish: without docker-proxy nothing listens there."""
        return {
            p.host
            for r in self.runners.values()
            if r.task.container_id and not r.task.is_terminal
            for p in r.task.ports
        }

    # --- supervision ---------------------------------------------------------------------------
    def _supervise(self, task: Task, *, fresh: bool = False) -> TaskRunner:
        alloc = self.allocs.join(task.id, task.alloc) if task.alloc else None
        first = self._runner(task, fresh=fresh, alloc=alloc)
        pending: TaskRunner | None = first

        async def run() -> None:
            nonlocal pending
            runner, pending = pending, None
            if runner is None:
                # A runner that crashed (a change the store refused) left its record ahead
                # of the store: its successor starts from what was saved. Unless the task
                # got a runner meanwhile (sent again, stopped) or is gone: one runner a task.
                saved = self.store.find_task(task.id)
                if task.id in self.runners or saved is None:
                    return
                runner = self._runner(saved, fresh=False, alloc=alloc)
            try:
                await runner.run()
            finally:
                if self.runners.get(task.id) is runner:
                    del self.runners[task.id]
            if alloc is not None:  # not when cancelled: the worker closes, the task lives on
                await self.allocs.release(alloc.alloc.id)

        self.loops.start(f"task {task.id}", run, keep=self._runner_tasks)
        return first

    def _runner(self, task: Task, *, fresh: bool, alloc: AllocRunner | None) -> TaskRunner:
        runner = TaskRunner(
            task,
            node=self.name,
            runtime=self.runtime,
            store=self.store,
            prober=self.prober,
            on_change=self.feed.changed,
            fresh=fresh,
            starts=self._starts,
            engine=self.engine,
            launch=alloc.launcher(task) if alloc else None,
            telemetry=self.telemetry,
        )
        self.runners[task.id] = runner
        return runner

    # --- allocations ---------------------------------------------------------------------------
    def _runs(self, task_id: str) -> bool:
        """Whether the task's runner is at work: only then may it start a container.

        A task whose runner finished (stopped, or ended for good) never starts one again
        unless it is placed here anew, which gives it a new runner; its exited container,
        if kept, needs no network (the engine removes a network from under stopped ones).
        """
        runner = self.runners.get(task_id)
        return runner is not None and not runner.done.is_set()

    # --- machine sample ----------------------------------------------------------------------
    def _sample(self) -> None:
        if self.sampler is not None:
            running = sum(1 for r in self.runners.values() if r.task.state is State.RUNNING)
            self._stats = self.sampler.sample(tasks_running=running)
            self._ports_in_use = self.sampler.ports_in_use()
