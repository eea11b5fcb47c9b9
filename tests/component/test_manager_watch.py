"""A node's watch (its blocking query) keeps no answer it has reconciled.

The manager's watch loop waits on each node's next answer for most of its life; the
answer before it (the node's tasks and their histories, parsed) had stayed referenced
while it waited: at 1,000 simulated nodes, 3,880 Task copies and 11,640 events beside
the manager's own records (docs/benchmarks.md, "Where the manager's memory goes").
"""

from __future__ import annotations

import asyncio
import weakref

from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import MachineStats, Node, Resources
from cube.protocol import NodeReport, TaskChanges
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task


class OneAnswer(WorkerClient):
    """A node whose blocking query answers once (nothing of its own), then never again."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[weakref.ref[TaskChanges]] = []
        self.waiting = asyncio.Event()

    async def stats(self, address: str, *, wait: float | None = None) -> NodeReport:
        return NodeReport(
            name="n1", capacity=Resources(cpu=1), allocated=Resources(), stats=MachineStats()
        )

    async def tasks(self, address: str) -> list[Task]:
        return []

    async def watch(self, address: str, *, since: str | None, wait: float) -> TaskChanges:
        if not self.answered:
            changes = TaskChanges(index="1", complete=True, tasks=[], events={})
            self.answered.append(weakref.ref(changes))
            return changes
        self.waiting.set()
        await asyncio.Event().wait()  # the next change never comes
        raise AssertionError("unreachable")


async def test_the_watch_keeps_no_reconciled_answer_while_it_waits_for_the_next() -> None:
    store = MemoryStore()
    store.save_node(Node(name="n1", address="http://n1", capacity=Resources(cpu=1)))
    node = OneAnswer()
    manager = Manager(store=store, scheduler=make_scheduler(), workers=node, collect_interval=60.0)
    manager.membership.watch_all()  # the watch alone: no collection, no job loop
    try:
        await asyncio.wait_for(node.waiting.wait(), 10)
        # The answer is plain data (no cycles): nothing refers to it once it is dropped.
        assert len(node.answered) == 1
        assert node.answered[0]() is None, "the first answer is still referenced"
    finally:
        await manager.close()
