"""The manager's collection keeping its pace, live in this process: a node that does not
answer must not slow the collection of the others, a silent node is down at its deadline,
and collection slower than its interval stretches the node timeout it tells and judges.

The first test: a real manager (in this process, memory store) collecting from a node
whose address is a real TCP socket that accepts connections and never answers: each of
its polls waits for the HTTP timeout, which must not delay the next passes (every other
node's data would get as much older). The pure rules are tests/unit/test_manager_pacing.py's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from cube.manager.core import Manager
from cube.manager.pacing import MISSED_POLLS, node_timeout_for
from cube.manager.workers import WorkerClient
from cube.node import MachineStats, Node, NodeState, Resources
from cube.protocol import NodeReport
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.model import Task

INTERVAL = 0.1


HTTP_TIMEOUT = 0.5


async def test_waiting_on_a_silent_node_does_not_stretch_the_collection_period() -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, say nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = MemoryStore()
    store.save_node(
        Node(name="silent", address=f"http://127.0.0.1:{port}", capacity=Resources(cpu=1))
    )
    manager = Manager(
        store=store,
        scheduler=make_scheduler(),
        workers=WorkerClient(timeout=HTTP_TIMEOUT),
        collect_interval=INTERVAL,
        node_timeout=60.0,
    )
    await manager.start()
    try:
        await asyncio.sleep(4 * HTTP_TIMEOUT)  # a few passes, each waiting HTTP_TIMEOUT
        assert held, "the manager never called the node"
        assert manager.collect_period == INTERVAL
    finally:
        await manager.close()
        server.close()
        for writer in held:
            writer.close()


def fleet_manager(nodes: int) -> Manager:
    store = MemoryStore()
    for i in range(nodes):
        store.save_node(Node(name=f"n{i}", address=f"http://127.0.0.1:{i + 1}"))
    return Manager(store=store, scheduler=make_scheduler(), collect_interval=1.0, node_timeout=10.0)


async def test_a_large_fleet_gives_a_silent_node_the_stretched_timeout() -> None:
    manager = fleet_manager(1000)
    assert manager.pace.node_timeout == 28.0
    node = manager.nodes["n0"]
    node.last_seen = datetime.now(UTC) - timedelta(seconds=20)
    await manager.membership.check_deadline(node, "timed out")
    assert node.state is NodeState.READY  # 20 s: two polls missed at most, not lost yet
    node.last_seen = datetime.now(UTC) - timedelta(seconds=30)
    await manager.membership.check_deadline(node, "timed out")
    assert node.state is NodeState.DOWN
    await manager.close()


async def test_a_silent_node_is_down_at_its_deadline_not_a_poll_later() -> None:
    manager = fleet_manager(1)
    node = manager.nodes["n0"]
    node.last_seen = datetime.now(UTC) - timedelta(seconds=manager.node_timeout - 0.2)
    # a failed poll, just in time
    await manager.membership.check_deadline(node, "connection refused")
    assert node.state is NodeState.READY
    await asyncio.sleep(0.4)  # no poll comes (none would for another interval)
    assert node.state is NodeState.DOWN
    assert "connection refused" in node.reason
    await manager.close()


class SlowNodes(WorkerClient):
    """Nodes that answer, each poll after ``LATE`` seconds (a starved machine), and have
    no blocking queries: collection is their only caller."""

    LATE = 0.3

    def __init__(self) -> None:
        super().__init__()
        self.told: list[float | None] = []  # the node timeout each poll carried

    async def stats(self, address: str, *, wait: float | None = None) -> NodeReport:
        self.told.append(self.node_timeout)
        await asyncio.sleep(self.LATE)
        name = address.removeprefix("http://")
        return NodeReport(
            name=name, capacity=Resources(cpu=1), allocated=Resources(), stats=MachineStats()
        )

    async def tasks(self, address: str) -> list[Task]:
        return []

    async def watch(self, address: str, *, since: str | None, wait: float) -> None:
        return None


async def test_collection_slower_than_its_interval_stretches_the_timeout_told_and_judged() -> None:
    # 48 nodes, 16 polls at a time, each answered after LATE: a pass takes at least
    # 2 * LATE to reach its last node, against an interval of 0.48 s (the pace's own
    # for 48 nodes: nothing stretched by the fleet's size).
    store = MemoryStore()
    for i in range(48):
        store.save_node(Node(name=f"n{i}", address=f"http://n{i}", capacity=Resources(cpu=1)))
    nodes = SlowNodes()
    manager = Manager(
        store=store,
        scheduler=make_scheduler(),
        workers=nodes,
        collect_interval=0.48,
        node_timeout=0.5,
    )
    assert manager.node_timeout_in_force() == manager.pace.node_timeout == 0.5
    await manager.collect()
    await asyncio.gather(*manager._background)

    stretched = manager.node_timeout_in_force()
    assert stretched >= 0.5 + MISSED_POLLS * (2 * SlowNodes.LATE - 0.48)
    assert nodes.node_timeout == stretched  # what the next call tells every node
    assert nodes.told[-1] > nodes.told[0] == 0.5  # the last polls of the pass told more

    # A call to a node silent for longer than the configured timeout, not the one in
    # force, fails: not Down (the manager itself had not come back to it sooner).
    node = manager.nodes["n0"]
    node.last_seen = datetime.now(UTC) - timedelta(seconds=0.55)
    await manager._call_failed(node, "ReadTimeout")
    assert node.state is NodeState.READY
    node.last_seen = datetime.now(UTC) - timedelta(seconds=stretched + 1)
    await manager._call_failed(node, "ReadTimeout")
    assert node.state is NodeState.DOWN
    await manager.close()


async def test_nodes_that_join_during_a_slow_pass_lengthen_the_timeout_told() -> None:
    manager = fleet_manager(1000)
    registry = manager.node_registry
    registry.polls.last = (40.0, 1000)  # collection goes round in 40 s, not the 10 s set
    steady = manager.node_timeout_in_force()
    assert steady == node_timeout_for(40.0, collect_interval=1.0, node_timeout=10.0)
    for i in range(500):  # half as many again join, now
        await registry.create(Node(name=f"j{i}", address=f"http://j{i}"))
    growing = manager.node_timeout_in_force()
    # 1,500 nodes, and 500 more expected by the next call: 2,000 at 40 ms each, 80 s.
    assert growing == node_timeout_for(80.0, collect_interval=1.0, node_timeout=10.0)
    assert registry.workers.node_timeout == growing  # told to every node from now on
    assert registry.call_timeout_in_force() > registry.workers.timeout  # 2 s stretched
    await manager.close()
