"""Collection: what nodes report, brought into the manager's records.

:class:`Collector` owns the collection passes (the polls in flight and their slots,
the period of the last pass), the lock that lets one report of a node be reconciled at
a time (its watch and collection may overlap), and the copies a node stopped on its
own. Every ``collect_interval`` it asks each node for its metrics (and its tasks, unless
they are watched), lets membership judge a node that did not answer, and reconciles
task states; in a large fleet the interval stretches (see :mod:`cube.manager.pacing`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from typing import Any

from cube.background import spawn
from cube.errors import CubeError
from cube.log import get_logger
from cube.manager.dispatch import Dispatcher
from cube.manager.membership import Membership
from cube.manager.nodes import PLACED, NodeRegistry
from cube.manager.reconcile import gave_up, merge_report, needs_merge
from cube.manager.registry import TaskRegistry
from cube.manager.stops import Stops
from cube.manager.workers import WorkerClient
from cube.metrics.manager import ManagerTelemetry
from cube.node import Node
from cube.task.model import DesiredState, Task, TaskEvent
from cube.task.state import TERMINAL, State

log = get_logger("cube.manager")

#: Calls to nodes in flight at once, per collection pass (see Collector.collect).
COLLECT_CONCURRENCY = 16
#: Event histories asked of one node at once while reconciling.
HISTORY_CALLS = 16


class Collector:
    """Polls every node, and reconciles what nodes report with the manager's tasks."""

    def __init__(
        self,
        registry: TaskRegistry,
        nodes: NodeRegistry,
        dispatcher: Dispatcher,
        stops: Stops,
        membership: Membership,
        workers: WorkerClient,
        telemetry: ManagerTelemetry,
        *,
        background: set[asyncio.Task[Any]],
    ) -> None:
        self.registry = registry
        self.nodes = nodes
        self.dispatcher = dispatcher
        self.stops = stops
        self.membership = membership
        self.workers = workers
        self.telemetry = telemetry
        self._background = background
        #: The time between the starts of two collection passes: the interval in force (see
        #: pace), or longer when a pass overran it (see collect_loop).
        self.collect_period = nodes.collect_interval
        #: (node, task) of copies a node stopped on its own (see gave_up): until the node
        #: reports a copy it runs, a stopped one is that copy, not news of a new placement.
        self._given_up: set[tuple[str, str]] = set()
        #: One reconciliation of a node at a time (its watch and collection may overlap).
        self._reconciling: dict[str, asyncio.Lock] = {}
        #: Collection: polls in flight at once, and the nodes they are polling.
        self._poll_slots = asyncio.Semaphore(COLLECT_CONCURRENCY)
        self._polling: set[str] = set()

    async def collect_loop(self) -> None:
        """A pass every collection interval (:attr:`NodeRegistry.pace`), its polls spread
        over it.

        A pass that could not start its polls within the interval (a busy machine: polls
        wait for a free slot, timers fire late) is followed by the next one at once, so
        the manager collects as fast as it can then, and no faster than the interval in
        force otherwise. :attr:`collect_period` is the time the last pass took to start
        every poll, or the interval if less.
        """
        while True:
            started = time.monotonic()
            interval = self.nodes.pace.collect
            await self.collect(over=interval)
            self.telemetry.collected(time.monotonic() - started)
            self.collect_period = max(interval, time.monotonic() - started)
            if self.collect_period > interval:
                log.debug("collection pass overran its interval", seconds=self.collect_period)
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def collect(self, *, over: float = 0.0) -> None:
        """One pass over every node: metrics, liveness, task states.

        The polls are spread evenly over ``over`` seconds (the collection loop gives the
        interval), so that a large fleet's polls come at a steady rate rather than as a
        burst that holds the API up; and at most :data:`COLLECT_CONCURRENCY` are in
        flight, because httpx's connection pool looks at every connection and queued
        request each time it hands one out. Returns once every poll has started: a node
        that does not answer is waited for by its own poll only (until the HTTP timeout),
        and skipped by the passes that come meanwhile, so every other node keeps its pace.
        """
        nodes = list(self.nodes.nodes.values())
        start, step = time.monotonic(), over / max(1, len(nodes))
        clock = self.nodes.polls  # how fast the passes really go: the node timeout follows
        clock.pass_started(start, len(nodes))
        for i, node in enumerate(nodes):
            if node.name in self._polling:  # its last poll has not come back yet
                clock.node_reached()
                continue
            if (delay := start + i * step - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            await self._poll_slots.acquire()
            clock.node_reached()
            self.nodes.node_timeout_in_force()  # what this poll tells the node
            self._polling.add(node.name)
            spawn(self._poll(node), f"poll {node.name}", keep=self._background)
        clock.pass_ended(time.monotonic())

    async def _poll(self, node: Node) -> None:
        try:
            await self._collect_node(node)
        except CubeError as exc:  # one node's trouble must not end the pass (or loop)
            log.warning("collecting a node failed", node=node.name, error=exc.message)
        finally:
            self._polling.discard(node.name)
            self._poll_slots.release()

    async def _collect_node(self, node: Node) -> None:
        reported: list[Task] | None = None
        try:
            if self.membership.watched(node.name):  # its tasks arrive through the watch
                report = await self.workers.stats(node.address)
            else:
                report, reported = await asyncio.gather(
                    self.workers.stats(node.address), self.workers.tasks(node.address)
                )
        except CubeError as exc:
            # Its watch may hang until its timeout (a cut link): collection lists the node's
            # tasks again until the watch answers, so a node that is back is reconciled now.
            await self.membership.call_failed(node, exc.message)
            return
        await self.membership.join(node.address, report)
        if reported is not None:
            await self.reconcile(node, reported)

    async def reconcile(
        self,
        node: Node,
        reported: list[Task],
        complete: bool = True,
        histories: dict[str, list[TaskEvent]] | None = None,
    ) -> None:
        """:meth:`_reconcile`, one report of a node at a time."""
        async with self._reconciling.setdefault(node.name, asyncio.Lock()):
            await self.telemetry.reconciling(
                self._reconcile(node, reported, complete=complete, histories=histories)
            )

    async def _reconcile(
        self,
        node: Node,
        reported: list[Task],
        *,
        complete: bool = True,
        histories: dict[str, list[TaskEvent]] | None = None,
    ) -> None:
        """Bring the manager's tasks in line with what ``node`` reported about them.

        ``complete``: ``reported`` lists every task of the node, so a task it leaves out
        is one the node does not know (not merely one that did not change).
        ``histories``: the node's events of the reported tasks, if it sent them along.
        """
        seen: set[str] = set()
        if histories is None:
            histories = await self._histories(node, reported)
        for copy in reported:
            seen.add(copy.id)
            task = self.registry.tasks.get(copy.id)
            if task is None:
                continue  # run on the node directly, not through the manager: not ours to judge
            if self.stops.can_readopt(task, copy, node):
                await self.dispatcher.take_back(task, node)
            key = (node.name, copy.id)
            if copy.desired is DesiredState.RUN:
                self._given_up.discard(key)
            elif (
                task.node == node.name
                and task.desired is DesiredState.RUN
                and (key in self._given_up or self.dispatcher.in_flight(task.id) is not None)
            ):
                # The copy it gave up, and the task placed there again: its new send is on
                # its way; or it got no answer (the node may not have it: sent again; if
                # the node has it, this report is older than it, and the send a no-op).
                if self.dispatcher.in_flight(task.id) is None and task.state is State.SCHEDULED:
                    await self.dispatcher.send(task, node)
                continue
            if gave_up(task, copy, node.name):
                # Stopped by the node on its own (its manager was silent too long): place
                # it again, here or elsewhere.
                self._given_up.add(key)
                why = f"node {node.name} stopped it ({copy.reason})"
                if task.alloc is not None:  # only the job service places it again
                    await self.dispatcher.end_alloc_task(task, f"{why}; its allocation is replaced")
                else:
                    await self.dispatcher.unplace(task, f"{why}; rescheduling")
            if task.node != node.name:
                if not copy.is_terminal or copy.container_id:
                    self.stops.stop_copy(node, copy.id)
                continue
            if needs_merge(task, copy):
                events = histories.get(task.id)
                if events is None:
                    events = await self.workers.events(node.address, task.id)
                merged = functools.partial(_merged, node.name, copy, events)
                await self.registry.change(task, merged)
                if task.state in TERMINAL:
                    self.dispatcher.capacity_changed()  # its resources are free again
            if task.desired is DesiredState.STOP and (not copy.is_terminal or copy.container_id):
                self.stops.stop_once(task, node)
        if not complete:
            return
        for task in self.registry.tasks_on(node.name):
            if (
                task.id not in seen
                and task.state in PLACED
                and task.desired is DesiredState.RUN
                and self.dispatcher.in_flight(task.id) is None  # not yet known: on its way
            ):
                log.info(
                    "node does not know its task; sending it again", task=task.id, node=node.name
                )
                await self.dispatcher.send(task, node)

    async def _histories(self, node: Node, reported: list[Task]) -> dict[str, list[TaskEvent]]:
        """The node's event histories of the reported tasks that will be merged, asked for
        all at once: one after the other, a burst of changes (a hundred tasks started
        together) would cost a round trip each. A history that could not be had is left
        out (asked for again when needed)."""
        wanted = []
        for copy in reported:
            task = self.registry.tasks.get(copy.id)
            if task is not None and (
                (task.node == node.name and needs_merge(task, copy))
                or self.stops.can_readopt(task, copy, node)
            ):
                wanted.append(copy.id)
        if not wanted:
            return {}
        limit = asyncio.Semaphore(HISTORY_CALLS)

        async def history(task_id: str) -> list[TaskEvent]:
            async with limit:
                return await self.workers.events(node.address, task_id)

        answers = await asyncio.gather(*(history(t) for t in wanted), return_exceptions=True)
        return {
            task_id: answer
            for task_id, answer in zip(wanted, answers, strict=True)
            if not isinstance(answer, BaseException)
        }


def _merged(
    node: str, copy: Task, events: Sequence[TaskEvent], draft: Task
) -> list[TaskEvent] | None:
    """Merge ``node``'s copy into the draft, if it is still placed there and news to it."""
    if draft.node != node or not needs_merge(draft, copy):
        return None  # moved, or merged meanwhile (by a stop's answer)
    return merge_report(draft, copy, events)
