"""Placement: tasks onto nodes, sent there, and off them again.

:class:`Dispatcher` owns the send queue (the sends in flight and their slots) and the
bookkeeping that decides when a Pending task is tried again: the cluster's *capacity
generation*, bumped by every change that may let a task fit (a node joined, capacity
was freed...), and the generation each unplaceable task was last tried at. It is the one
place a task is placed on or taken off a node; everything else asks it.

The dispatch loop places Pending tasks as soon as they arrive (woken by submissions,
node joins and freed capacity; a slow timer is only the safety net). Tasks of a job's
allocation are placed by the job service, which hands them to :meth:`start_alloc_task`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from cube.background import spawn, wait_event
from cube.errors import CubeError, InvalidSpec, StoreUnavailable, Unavailable
from cube.log import get_logger
from cube.manager.nodes import PLACED, NodeRegistry
from cube.manager.registry import TaskRegistry
from cube.manager.workers import WorkerClient
from cube.metrics.manager import ManagerTelemetry
from cube.node import Node
from cube.scheduler import Scheduler, allocate
from cube.task.model import DesiredState, Health, Task, TaskEvent
from cube.task.spec import KEEP_SECRETS, TaskRequest
from cube.task.state import State

log = get_logger("cube.manager")

#: Calls to nodes in flight at once per dispatch pass (see Collector.collect: same pool,
#: same reason).
DISPATCH_CONCURRENCY = 16
#: Task sends in flight at once (see Dispatcher.send). Without a bound, a job pass of 500
#: placements queued 500 requests in the fleet's connection pool: each waited there past
#: its timeout, counted as the node being unreachable, and the node was marked down
#: (bench/jobs.py: 0 of 10,000 allocations ever ran on 1,000 simulated nodes).
SEND_CONCURRENCY = 32
#: The longest pause between two dispatch passes (see Dispatcher.dispatch_loop).
MAX_DISPATCH_PAUSE = 0.5


class Dispatcher:
    """Places Pending tasks and sends them to their nodes; moves tasks off nodes."""

    def __init__(
        self,
        registry: TaskRegistry,
        nodes: NodeRegistry,
        scheduler: Scheduler,
        workers: WorkerClient,
        telemetry: ManagerTelemetry,
        *,
        background: set[asyncio.Task[Any]],
        capacity_changed: Callable[[], None],
        call_failed: Callable[[Node, str], Awaitable[None]],
    ) -> None:
        """``call_failed``: a send to the node did not come back (see _send_once)."""
        self.registry = registry
        self.nodes = nodes
        self.scheduler = scheduler
        self.workers = workers
        self.telemetry = telemetry
        self._background = background
        self._published = capacity_changed
        self._call_failed = call_failed
        self._dispatch_wake = asyncio.Event()
        # Placement of a task that fit nowhere is retried only once the cluster changed
        # (a node joined, capacity was freed...): each change bumps the generation.
        self._generation = 0
        self._tried: dict[str, int] = {}
        #: Task ID -> set when its send to a node ended. A stop waits for it: otherwise it can
        #: overtake the send, find nothing to stop, and the node starts the task after all.
        self._sending: dict[str, asyncio.Event] = {}
        self._send_slots = asyncio.Semaphore(SEND_CONCURRENCY)

    @property
    def generation(self) -> int:
        """The capacity generation: bumped by every change that may let a task fit."""
        return self._generation

    def wake(self) -> None:
        """Run a dispatch pass soon (a task was submitted)."""
        self._dispatch_wake.set()

    def in_flight(self, task_id: str) -> asyncio.Event | None:
        """The send of ``task_id`` in flight (set when it ends), if there is one."""
        return self._sending.get(task_id)

    @property
    def sends_in_flight(self) -> int:
        """Sends begun and not ended (waiting for a slot included): the job service
        stops placing while too many are queued."""
        return len(self._sending)

    def forget(self, task_id: str) -> None:
        """``task_id`` is gone (see Manager.forget): nothing to retry."""
        self._tried.pop(task_id, None)

    def capacity_changed(self) -> None:
        self._generation += 1
        self._dispatch_wake.set()
        self._published()

    async def dispatch(self) -> None:
        """Place every Pending task that fits, oldest first, and send each to its node.

        The decisions are made at once against the pass's views; then each placement is
        saved (all queued on the store's path together), and sent once saved. Meanwhile
        a placed task holds its resources in its node's view (NodeRegistry.hold)."""
        pending = [
            t
            for t in self.registry.tasks.values()
            if t.state is State.PENDING
            and t.desired is DesiredState.RUN
            and t.alloc is None  # an allocation's tasks are placed together, by the job service
            and self._tried.get(t.id) != self._generation
        ]
        if not pending:
            return
        views = self.nodes.list_nodes()
        index = {n.name: i for i, n in enumerate(views)}
        changes: list[Coroutine[Any, Any, None]] = []
        gate = asyncio.Semaphore(DISPATCH_CONCURRENCY)
        for task in pending:
            decision = self.telemetry.place(self.scheduler, task.spec, views)
            explained = decision.model_dump(mode="json")
            if decision.node is None:
                self._tried[task.id] = self._generation
                if task.reason != decision.reason:
                    changes.append(self._explain(task, decision.reason, explained))
                continue
            self._tried.pop(task.id, None)
            i = index[decision.node]
            views[i] = allocate(views[i], task.spec)
            self.nodes.hold(decision.node, task)
            self._sending.setdefault(task.id, asyncio.Event())  # before anything else runs
            changes.append(self._place(task, views[i], explained, gate))
        # A placement the store refused (a full disk) stays Pending; the others still go.
        # The refusal ends the pass (the dispatch loop is restarted, and says so).
        await _together(changes)

    async def _explain(self, task: Task, reason: str, explained: dict[str, Any]) -> None:
        """Record why ``task`` fits nowhere (while it is still Pending)."""

        def unplaceable(draft: Task) -> list[TaskEvent] | None:
            if draft.state is not State.PENDING:
                return None
            draft.reason, draft.placement = reason, explained
            return []

        await self.registry.change(task, unplaceable)

    async def _place(
        self, task: Task, node: Node, explained: dict[str, Any], gate: asyncio.Semaphore
    ) -> None:
        """Save ``task`` as Scheduled on ``node`` (unless stopped meanwhile), then send it."""

        def scheduled(draft: Task) -> list[TaskEvent] | None:
            if draft.state is not State.PENDING or draft.desired is not DesiredState.RUN:
                return None
            draft.placement, draft.node = explained, node.name
            draft.node_events = 0  # a new placement: the node's history of it starts now
            return [draft.transition(State.SCHEDULED, f"placed on {node.name}")]

        placed = False
        try:
            placed = await self.registry.change(task, scheduled)
        finally:
            self.nodes.release(node.name, task.id)
            if not placed:
                self._not_sent(task.id)
        if not placed:
            return
        async with gate:
            await self.send(task, node)

    def _not_sent(self, task_id: str) -> None:
        """A send announced (see in_flight) that will not be made: a stop waits no more."""
        if (sending := self._sending.pop(task_id, None)) is not None:
            sending.set()

    def start_alloc_task(self, task: Task, node: Node, reason: str) -> None:
        """Record a task of a job's allocation as Scheduled on ``node`` and send it there.

        The job service placed the allocation; the task goes the way every task goes:
        saved (in the background: the job service's pass does not await it, see
        :mod:`cube.store.aio`), then shown and sent. Until it is saved, its resources are
        held on ``node`` and a second start of it is ignored. One the store refuses is
        logged, and started again by the job service's next full pass, which finds the
        allocation without it (JobService._derive)."""
        if task.id in self._sending:
            return  # its creation is being saved, or it is on its way
        self.nodes.hold(node.name, task)
        self._sending.setdefault(task.id, asyncio.Event())
        starting = self._start_alloc_task(task, node, reason)
        spawn(starting, "start allocation task", keep=self._background)

    async def _start_alloc_task(self, task: Task, node: Node, reason: str) -> None:
        ref = task.alloc
        made = f"created for {ref.name} ({ref.id})" if ref else "created"
        task.node = node.name
        created = False
        try:
            events = [
                TaskEvent(state=State.PENDING, reason=made),
                task.transition(State.SCHEDULED, reason),
            ]
            _, created = await self.registry.create(task, events)
        finally:
            self.nodes.release(node.name, task.id)
            if not created:
                self._not_sent(task.id)
        if created:
            await self.send(task, node)

    async def end_alloc_task(self, task: Task, reason: str) -> None:
        """A task of an allocation is not placed again on its own: it ends, and the job
        service replaces its allocation as a whole. It stays on its node, so that a copy
        the node still runs when it comes back is stopped (``desired: stop``)."""

        def ended(draft: Task) -> list[TaskEvent] | None:
            if draft.desired is DesiredState.STOP and draft.is_terminal:
                return None
            draft.desired, draft.desired_reason = DesiredState.STOP, reason
            return [] if draft.is_terminal else [draft.transition(State.FAILED, reason)]

        if await self.registry.change(task, ended):
            self.capacity_changed()

    async def send(self, task: Task, node: Node) -> None:
        sending = self._sending.setdefault(task.id, asyncio.Event())
        try:
            # The wait for a slot is the manager's, not the node's: outside the timeout.
            async with self._send_slots:
                await self._send_once(task, node)
        finally:
            sending.set()
            if self._sending.get(task.id) is sending:
                del self._sending[task.id]

    async def _send_once(self, task: Task, node: Node) -> None:
        alloc = None if task.alloc is None else task.alloc.model_dump()
        spec = task.spec.model_dump(context=KEEP_SECRETS)
        request = TaskRequest.model_validate({**spec, "id": task.id, "alloc": alloc})
        try:
            reported = await self.workers.run(node.address, request)
        except InvalidSpec as exc:  # the node refuses this spec: trying again will not help
            why = f"node {node.name}: {exc.message}"

            def refused(draft: Task) -> list[TaskEvent] | None:
                if draft.state is not State.SCHEDULED:
                    return None
                return [draft.transition(State.FAILED, why)]

            await self.registry.change(task, refused)
            return
        except Unavailable as exc:
            # No answer (a timeout on a busy machine, a node gone): the node may have the
            # task or not, and a slow answer is not a lost node. The task stays placed
            # there; the node's deadline judges the node (marked Down at once, a node's
            # every allocation was replaced for one late answer: bench/jobs.py), and its
            # next complete report the task: merged if it has it, sent again if not.
            await self._call_failed(node, exc.message)
            return
        except CubeError as exc:
            if task.alloc is not None and task.state is State.SCHEDULED:
                await self.end_alloc_task(task, f"could not start on {node.name}: {exc.message}")
            elif task.state is State.SCHEDULED and task.desired is DesiredState.RUN:
                await self.unplace(task, f"could not start on {node.name}: {exc.message}")
                if isinstance(exc, StoreUnavailable):
                    # The node cannot save it (a full disk): placed again once the cluster
                    # changes (or by the dispatch's safety net), not in a loop against it.
                    self._tried[task.id] = self._generation
            return
        log.info("task sent", task=task.id, node=node.name)
        del reported  # its progress arrives with the next collection

    async def dispatch_loop(self) -> None:
        self._dispatch_wake.set()  # a pass at once, also when started again after a crash
        while True:
            if not await wait_event(self._dispatch_wake, 5.0):
                self._generation += 1  # the safety net: retry everything now and then
            self._dispatch_wake.clear()
            started = time.process_time()
            await self.dispatch()
            # Each pass starts with a view of every node (O(nodes + tasks)). In a burst of
            # submissions, each of which wakes the dispatcher, a pause as long as the CPU
            # the pass took lets the next ones gather, so a pass places many tasks and
            # dispatch takes at most about half the manager's time. (CPU, not wall time: a
            # pass that waited on a slow node cost nothing, and must not slow the next.)
            await asyncio.sleep(min(time.process_time() - started, MAX_DISPATCH_PAUSE))

    async def move_tasks_off(self, node: Node, why: str) -> list[str]:
        """Send every task placed on ``node`` back to the scheduler (same ID, history kept).

        Returns the IDs of the tasks moved. Their changes are saved together (a lost node
        may have held hundreds: one commit, see cube.store.aio); a refused one stays on
        the node, and is moved by the next look at it (the next failed poll)."""
        moved, changes = [], []
        for task in self.registry.tasks_on(node.name):
            if task.state in PLACED and task.desired is DesiredState.RUN:
                if task.alloc is not None:
                    changes.append(self.end_alloc_task(task, f"{why}; its allocation is replaced"))
                else:
                    changes.append(self.unplace(task, f"{why}; rescheduling"))
                moved.append(task.id)
        await _together(changes)
        if moved:
            log.warning("tasks moved off node", node=node.name, tasks=len(moved), why=why)
        return moved

    async def unplace(self, task: Task, reason: str) -> None:
        """Back to Pending, off its node. The node's copy, if any, is stopped by reconciliation.

        What belonged to that copy goes with it: its container, its ports, and its health
        (a Pending task shown Healthy, as `cube status` did after a drain, has no check
        running at all)."""
        node = task.node

        def pending(draft: Task) -> list[TaskEvent] | None:
            if draft.node != node or draft.state not in PLACED:
                return None  # moved or ended meanwhile
            draft.node, draft.container_id, draft.ports = None, None, []
            draft.health = Health.UNKNOWN
            return [draft.transition(State.PENDING, reason)]

        if await self.registry.change(task, pending):
            self.capacity_changed()

    async def take_back(self, task: Task, node: Node) -> None:
        reason = f"node {node.name} is back and still runs it"

        def running(draft: Task) -> list[TaskEvent] | None:
            if draft.state is not State.PENDING or draft.node is not None:
                return None  # placed meanwhile
            draft.node = node.name
            # Straight to Running: the node's events up to its Running may have been merged
            # before the node was lost, and would not be replayed.
            return [
                draft.transition(State.SCHEDULED, reason),
                draft.transition(State.RUNNING, reason),
            ]

        await self.registry.change(task, running)


async def _together(changes: list[Coroutine[Any, Any, None]]) -> None:
    """Make changes of different tasks at once, so that their saves queue together (one
    commit: see cube.store.aio). Each is made or refused on its own; the first refusal is
    raised once all have ended."""
    done = await asyncio.gather(*changes, return_exceptions=True)
    if failed := [e for e in done if isinstance(e, BaseException)]:
        raise failed[0]
