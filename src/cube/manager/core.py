"""The manager: keeps the desired state of the cluster and drives nodes towards it.

It holds every task and node in memory (the authority while it runs) and writes
each change through to the store (so a restarted manager loses nothing). The work is
split by the state each part owns; each part asks the others rather than reading
their fields, and tells them of changes through the callbacks it is given:

* :class:`~cube.manager.registry.TaskRegistry`: the task records, saved through;
* :class:`~cube.manager.nodes.NodeRegistry`: the node records and their views;
* :class:`~cube.manager.dispatch.Dispatcher`: placing tasks and the send queue; the
  dispatch loop places Pending tasks as soon as they arrive (woken by submissions,
  node joins and freed capacity; a slow timer is only the safety net);
* :class:`~cube.manager.stops.Stops`: stop calls to nodes in flight;
* :class:`~cube.manager.membership.Membership`: joins, drains, deadlines, and the
  watch of each node (a blocking query answered as soon as one of its tasks changes);
  a join loop keeps trying the statically configured worker addresses until they answer;
* :class:`~cube.manager.collect.Collector`: every ``collect_interval`` asks each node
  for its metrics (and its tasks, unless they are watched), and reconciles task states;
* :class:`~cube.manager.jobs.JobService`: jobs and their allocations.

:class:`Manager` composes them, owns the loops they run, and is what the HTTP API and
the job service call.

What outlives the process: the records (tasks, nodes, jobs, versions, allocations,
deployments) are written through to the store (every change is saved before it is
shown, off the loop: see :mod:`cube.store.aio`), and every cache (each task's JSON in
lists, node views with their allocation, the index of tasks by node) is derived from
them, so a manager
built from the store alone shows the same (tests/component/test_manager_takeover.py): a restart
today, another manager taking over later. What is lost is soft, and heals: when each
node was last heard (a new manager gives every node a fresh deadline), node metrics
(the next poll), the sends and stops in flight (collection finds what a node lacks
or still runs), and the capacity generation (the first dispatch pass tries every
Pending task).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

from cube.background import Supervisor, cancel_all
from cube.errors import Conflict, NotFound
from cube.log import get_logger
from cube.manager.collect import Collector
from cube.manager.dispatch import Dispatcher
from cube.manager.jobs import JobService
from cube.manager.membership import Membership
from cube.manager.nodes import NodeRegistry
from cube.manager.pacing import Pace
from cube.manager.registry import TaskRegistry
from cube.manager.stops import Stops
from cube.manager.workers import WorkerClient
from cube.metrics.manager import ManagerTelemetry
from cube.node import Node
from cube.protocol import JoinAnswer
from cube.scheduler import Scheduler
from cube.store.aio import AsyncStore, OffLoopStore
from cube.store.base import Store
from cube.task.model import STOPPED_BY_USER, Task, TaskEvent
from cube.task.spec import TaskRequest
from cube.task.state import State

log = get_logger("cube.manager")


class Manager:
    def __init__(
        self,
        *,
        store: Store,
        scheduler: Scheduler,
        workers: WorkerClient | None = None,
        static_workers: Sequence[str] = (),
        static_token: str | None = None,
        collect_interval: float = 1.0,
        node_timeout: float = 10.0,
    ) -> None:
        self.store = store
        #: The store as the loop awaits it (see :mod:`cube.store.aio`): every change of a
        #: task or node, and the reads made where the manager awaits anyway, go through
        #: it, in order, off the loop for SQLite.
        self.async_store: AsyncStore = OffLoopStore(store)
        self.scheduler = scheduler
        self.workers = workers or WorkerClient(timeout=max(2.0, collect_interval * 2))
        self.static_workers = list(static_workers)
        self.static_token = static_token
        self.collect_interval = collect_interval
        self.node_timeout = node_timeout
        self._loops: list[asyncio.Task[None]] = []
        #: Runs the loops below, and starts one that crashed again (see GET /v1/health).
        self.loops = Supervisor("manager")
        #: Calls to nodes that nobody awaits (sends, stops, polls): cancelled at close.
        self._background: set[asyncio.Task[Any]] = set()
        #: Its metrics (GET /metrics): its records read at scrape time (so it may be made
        #: before the parts), and the hooks the parts call.
        self.telemetry = ManagerTelemetry(self)
        # The parts, lowest first; each is told of the changes of those above it through
        # a callback (the job service is made last: the callbacks look it up when called).
        # Their records are read once, here; from then on they are the authority.
        self.registry = TaskRegistry(
            store.list_tasks(),
            self.async_store,
            node_changed=self._node_changed,
            alloc_changed=self._alloc_task_changed,
        )
        self.node_registry = NodeRegistry(
            store.list_nodes(),
            self.async_store,
            self.registry,
            self.workers,
            collect_interval=collect_interval,
            node_timeout=node_timeout,
            went_down=self._wake_jobs,
        )
        self.dispatcher = Dispatcher(
            self.registry,
            self.node_registry,
            scheduler,
            self.workers,
            self.telemetry,
            background=self._background,
            capacity_changed=self._wake_jobs,
            call_failed=self._call_failed,
        )
        self.stops = Stops(
            self.registry,
            self.node_registry,
            self.dispatcher,
            self.workers,
            background=self._background,
        )
        self.membership = Membership(
            self.registry,
            self.node_registry,
            self.dispatcher,
            self.stops,
            self.workers,
            loops=self.loops,
            reconcile=self._reconcile,
            drained=self._wake_jobs,
        )
        self.collector = Collector(
            self.registry,
            self.node_registry,
            self.dispatcher,
            self.stops,
            self.membership,
            self.workers,
            self.telemetry,
            background=self._background,
        )
        #: Jobs and their allocations: they place their tasks through this manager.
        self.jobs = JobService(self)

    # --- the parts' records, as the API and the job service read them -------------------------
    @property
    def tasks(self) -> dict[str, Task]:
        return self.registry.tasks

    @property
    def nodes(self) -> dict[str, Node]:
        return self.node_registry.nodes

    @property
    def pace(self) -> Pace:
        """The intervals in force: the configured ones, stretched for a large fleet."""
        return self.node_registry.pace

    def node_timeout_in_force(self) -> float:
        """Seconds of silence after which a node is down, now (see NodeRegistry)."""
        return self.node_registry.node_timeout_in_force()

    @property
    def collect_period(self) -> float:
        """The time between the starts of the last two collection passes (see Collector)."""
        return self.collector.collect_period

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.membership.start()
        self._loops = [
            self.loops.start("dispatch", self.dispatcher.dispatch_loop),
            self.loops.start("collect", self.collector.collect_loop),
            *(
                self.loops.start(
                    f"join {a}",
                    functools.partial(
                        self.membership.join_loop, a, self.static_token, self.collect_interval
                    ),
                )
                for a in self.static_workers
            ),
        ]
        self.membership.watch_all()
        self.dispatcher.wake()
        self.jobs.start()
        log.info(
            "manager started",
            tasks=len(self.tasks),
            nodes=len(self.nodes),
            scheduler=self.scheduler.algorithm,
        )

    async def close(self) -> None:
        watches = self.membership.close()
        await self.jobs.close()
        await cancel_all([*self._loops, *watches, *self._background])
        await self.registry.settled()  # the changes queued: saved (or refused) before the end
        await self.workers.aclose()
        await self.async_store.aclose()  # not the store: its opener closes it
        log.info("manager stopped")

    # --- tasks ---------------------------------------------------------------------------------
    async def submit(self, request: TaskRequest) -> tuple[Task, bool]:
        """Accept a task as Pending and wake the dispatcher. Same ID and spec: a no-op.

        The task is saved before it is listed: a task the store refused (a full disk) must
        not be. Two submissions of one ID are taken one after the other (the task's guard,
        see TaskRegistry.create): the second finds the first."""
        spec = request.spec()
        task = Task(spec=spec) if request.id is None else Task(id=request.id, spec=spec)
        record, created = await self.registry.create(
            task, [TaskEvent(state=State.PENDING, reason="submitted")]
        )
        if not created:
            if record.spec != spec:
                raise Conflict(f"task {record.id} exists with a different spec")
            return record.model_copy(deep=True), False
        log.info("task submitted", task=task.id, name=task.spec.name)
        self.dispatcher.wake()
        return task.model_copy(deep=True), True

    def resolve(self, ref: str) -> Task:
        """The task with this ID, name or unique ID prefix (see :mod:`cube.manager.lookup`)."""
        return self.registry.resolve(ref)

    def get(self, task_id: str) -> Task:
        return self.resolve(task_id).model_copy(deep=True)

    def list_tasks(self, *, state: State | None = None, node: str | None = None) -> list[Task]:
        return [t.model_copy(deep=True) for t in self.registry.select(state, node)]

    def tasks_on(self, node: str) -> list[Task]:
        """Copies of the tasks placed on ``node``, from the registry's index by node: the
        cost of one node's tasks, not of a scan of every task of the cluster."""
        return [t.model_copy(deep=True) for t in self.registry.tasks_on(node)]

    def tasks_json(self, *, state: State | None = None, node: str | None = None) -> bytes:
        """The tasks as ``GET /v1/tasks`` lists them (see TaskRegistry.tasks_json)."""
        return self.registry.tasks_json(state=state, node=node)

    async def events(self, task_id: str) -> list[TaskEvent]:
        return await self.async_store.task_events(self.resolve(task_id).id)

    def forget(self, task_id: str) -> None:
        """Delete a task that ended with no container left (see TaskRegistry.forget); in
        the background: the job service's passes do not await."""
        self.registry.forget_later(task_id)
        self.dispatcher.forget(task_id)

    async def stop(self, task_id: str, *, reason: str = STOPPED_BY_USER) -> Task:
        """Stop a task in any state; returns once its node stopped it (or is unreachable)."""
        return await self.stops.stop(task_id, reason=reason)

    async def logs(self, task_id: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        task = self.resolve(task_id)
        node = self.nodes.get(task.node or "")
        if node is None:
            raise NotFound(f"task {task.id} has not been placed on a node yet ({task.reason})")
        async for chunk in self.workers.logs(node.address, task.id, tail=tail, follow=follow):
            yield chunk

    async def dispatch(self) -> None:
        """One dispatch pass (see Dispatcher.dispatch)."""
        await self.dispatcher.dispatch()

    def start_alloc_task(self, task: Task, node: Node, reason: str) -> None:
        """Record a task of a job's allocation as Scheduled on ``node`` and send it there."""
        self.dispatcher.start_alloc_task(task, node, reason)

    # --- nodes ---------------------------------------------------------------------------------
    async def register(
        self,
        name: str,
        address: str,
        token: str | None,
        *,
        secret: str | None = None,
        running: Sequence[str] = (),
    ) -> JoinAnswer:
        """A worker joins (see Membership.register)."""
        return await self.membership.register(name, address, token, secret=secret, running=running)

    def get_node(self, name: str) -> Node:
        return self.node_registry.get_node(name)

    def list_nodes(self) -> list[Node]:
        return self.node_registry.list_nodes()

    async def drain(self, name: str) -> Node:
        """Take no new tasks on ``name`` and move its tasks to other nodes."""
        return await self.membership.drain(name)

    async def undrain(self, name: str) -> Node:
        """Let ``name`` take tasks again."""
        return await self.membership.undrain(name)

    async def collect(self, *, over: float = 0.0) -> None:
        """One collection pass over every node (see Collector.collect)."""
        await self.collector.collect(over=over)

    # --- the parts' callbacks, and the parts' operations that tests call ----------------------
    def _node_changed(self, name: str | None) -> None:
        self.node_registry.node_changed(name)

    def _wake_jobs(self) -> None:
        self.jobs.wake()

    def _alloc_task_changed(self, task: Task) -> None:
        self.jobs.task_changed(task)  # its allocation's status may change

    async def _reconcile(
        self,
        node: Node,
        reported: list[Task],
        complete: bool,
        histories: dict[str, list[TaskEvent]] | None,
    ) -> None:
        await self.collector.reconcile(node, reported, complete, histories)

    def _save(self, task: Task, *events: TaskEvent) -> None:
        self.registry.save(task, *events)

    def _capacity_changed(self) -> None:
        self.dispatcher.capacity_changed()

    async def _mark_down(self, node: Node, reason: str) -> None:
        await self.node_registry.mark_down(node, reason)

    async def _move_tasks_off(self, node: Node, why: str) -> list[str]:
        return await self.dispatcher.move_tasks_off(node, why)

    async def _call_failed(self, node: Node, error: str) -> None:
        await self.membership.call_failed(node, error)
