"""Stopping tasks on their nodes, one call in flight per task or copy.

:class:`Stops` owns the stop calls in flight: for a task the manager stops (a user's
stop, an allocation's), and for a copy a node still has though the task is placed
elsewhere. Collection passes and blocking queries report the same copy again and again
while its stop runs; each would otherwise send another call. Because it knows which
copies are being stopped, it also answers whether a node that says it still runs a task
may have it back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cube.background import spawn
from cube.errors import CubeError, NotFound
from cube.log import get_logger
from cube.manager.dispatch import Dispatcher
from cube.manager.nodes import NodeRegistry
from cube.manager.reconcile import merge_report
from cube.manager.registry import TaskRegistry
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState
from cube.task.model import STOPPED_BY_USER, DesiredState, Task, TaskEvent
from cube.task.state import TERMINAL, State

log = get_logger("cube.manager")


class Stops:
    """Stop calls to nodes in flight, by task and by (node, task) copy."""

    def __init__(
        self,
        registry: TaskRegistry,
        nodes: NodeRegistry,
        dispatcher: Dispatcher,
        workers: WorkerClient,
        *,
        background: set[asyncio.Task[Any]],
    ) -> None:
        self.registry = registry
        self.nodes = nodes
        self.dispatcher = dispatcher
        self.workers = workers
        self._background = background
        #: Task ID -> the stop call in flight, so collection passes do not pile up more.
        self._stopping: dict[str, asyncio.Task[None]] = {}
        #: (node, task) of copies being stopped because the task is placed elsewhere.
        self._stopping_copies: set[tuple[str, str]] = set()

    async def stop(self, task_id: str, *, reason: str = STOPPED_BY_USER) -> Task:
        """Stop a task in any state; returns once its node stopped it (or is unreachable).

        ``reason`` travels to the node and is recorded as the reason of the task's end."""
        task = self.registry.resolve(task_id)
        unplaced = False

        def stopping(draft: Task) -> list[TaskEvent]:
            nonlocal unplaced
            draft.desired, draft.desired_reason = DesiredState.STOP, reason
            if unplaced := draft.state is State.PENDING:
                return [draft.transition(State.COMPLETED, f"{reason} before placement")]
            return []

        await self.registry.change(task, stopping)  # refused (a full disk): a 503, no change
        if unplaced:
            return task.model_copy(deep=True)
        if (sending := self.dispatcher.in_flight(task.id)) is not None:
            await sending.wait()
        node = self.nodes.nodes.get(task.node or "")
        if node is not None:
            await asyncio.shield(self.stop_once(task, node))
        self.dispatcher.capacity_changed()
        return task.model_copy(deep=True)

    def stop_once(self, task: Task, node: Node) -> asyncio.Task[None]:
        """Stop ``task`` on ``node``, or join the stop call already in flight."""
        stopping = self._stopping.get(task.id)
        if stopping is None or stopping.done():
            stopping = spawn(self._stop_on_node(task, node), "node call", keep=self._background)
            self._stopping[task.id] = stopping

            def forget(done: asyncio.Task[None]) -> None:
                if self._stopping.get(task.id) is done:
                    del self._stopping[task.id]

            stopping.add_done_callback(forget)
        return stopping

    def stop_copy(self, node: Node, task_id: str) -> None:
        """Stop the copy of a task that ``node`` still has though the task is placed
        elsewhere, with one call in flight per copy: every change the node reports in the
        meantime (one per blocking query) would otherwise send another."""
        key = (node.name, task_id)
        if key in self._stopping_copies:
            return
        log.warning("stopping a copy placed elsewhere", task=task_id, node=node.name)
        self._stopping_copies.add(key)
        call = spawn(
            self.workers.stop(node.address, task_id, wait=30.0), "node call", keep=self._background
        )
        call.add_done_callback(lambda _: self._stopping_copies.discard(key))

    async def _stop_on_node(self, task: Task, node: Node) -> None:
        reason = task.desired_reason or STOPPED_BY_USER
        try:
            wait = task.spec.stop_timeout + 20
            copy = await self.workers.stop(node.address, task.id, wait=wait, reason=reason)
            events = await self.workers.events(node.address, task.id)
        except NotFound:

            def never_arrived(draft: Task) -> list[TaskEvent] | None:
                # The node has no such task, so no container of it to remove either.
                ended = draft.state in TERMINAL
                if ended and draft.container_id is None:
                    return None
                draft.container_id = None
                return [] if ended else [draft.transition(State.COMPLETED, reason)]

            await self.registry.change(task, never_arrived)
            return
        except CubeError as exc:
            why = f"stop requested; node {node.name} did not answer: {exc.message}"

            def unanswered(draft: Task) -> list[TaskEvent]:
                draft.reason = why
                return []

            await self.registry.change(task, unanswered)
            return
        await self.registry.change(task, lambda draft: merge_report(draft, copy, events))

    def can_readopt(self, task: Task, copy: Task, node: Node) -> bool:
        """A task moved off a lost node that came back still running it, before it found
        another node: take the running copy back instead of stopping it and starting anew."""
        return (
            copy.state is State.RUNNING
            and copy.desired is DesiredState.RUN  # not a copy its node is stopping
            and self.may_take_back(task, node)
        )

    def may_take_back(self, task: Task, node: Node) -> bool:
        """Whether ``task`` may go back to ``node``, which says it still runs it."""
        return (
            task.state is State.PENDING
            and task.desired is DesiredState.RUN
            and task.node is None
            and node.state is NodeState.READY
            # Not a copy already being stopped (seen before it ran): the stop would end
            # the task just taken back, Completed though it should run.
            and (node.name, task.id) not in self._stopping_copies
        )
