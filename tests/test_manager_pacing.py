"""How often the manager calls on its nodes.

A node that does not answer must not slow the collection of the others; and the
intervals stretch as the fleet grows, so that the calls per second stay bounded.

The first test: a real manager (in this process, memory store) collecting from a node
whose address is a real TCP socket that accepts connections and never answers: each of
its polls waits for the HTTP timeout, which must not delay the next passes (every other
node's data would get as much older).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from cube.manager.core import Manager
from cube.manager.pacing import (
    IDLE_ANSWERS_PER_SECOND,
    MISSED_POLLS,
    POLLS_PER_SECOND,
    RESYNCS_PER_SECOND,
    Pace,
    pace,
)
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState, Resources
from cube.protocol import MAX_WAIT
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore

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


# --- stretching the intervals as the fleet grows (cube.manager.pacing) -------------------------
DEFAULTS = {"collect_interval": 1.0, "node_timeout": 10.0, "watch_wait": 10.0, "resync": 30.0}


def test_small_fleets_keep_the_configured_intervals() -> None:
    for nodes in (0, 1, 10, 100):
        assert pace(nodes, **DEFAULTS) == Pace(
            collect=1.0, watch_wait=10.0, resync=30.0, node_timeout=10.0
        )


def test_a_thousand_nodes_stretch_the_intervals_like_nomads_heartbeats() -> None:
    assert pace(1000, **DEFAULTS) == Pace(
        collect=10.0, watch_wait=50.0, resync=50.0, node_timeout=28.0
    )


def test_the_call_rates_stay_bounded_and_the_timeout_outlasts_missed_polls() -> None:
    for nodes in range(1, 20_001, 97):
        p = pace(nodes, **DEFAULTS)
        within = 1 + 1e-9  # float rounding
        assert nodes / p.collect <= POLLS_PER_SECOND * within
        assert nodes / p.watch_wait <= IDLE_ANSWERS_PER_SECOND * within or p.watch_wait == MAX_WAIT
        assert nodes / p.resync <= RESYNCS_PER_SECOND * within
        assert p.node_timeout >= DEFAULTS["node_timeout"]
        assert p.node_timeout >= MISSED_POLLS * p.collect


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
    await manager._check_deadline(node, "timed out")
    assert node.state is NodeState.READY  # 20 s: two polls missed at most, not lost yet
    node.last_seen = datetime.now(UTC) - timedelta(seconds=30)
    await manager._check_deadline(node, "timed out")
    assert node.state is NodeState.DOWN
    await manager.close()


async def test_a_silent_node_is_down_at_its_deadline_not_a_poll_later() -> None:
    manager = fleet_manager(1)
    node = manager.nodes["n0"]
    node.last_seen = datetime.now(UTC) - timedelta(seconds=manager.node_timeout - 0.2)
    await manager._check_deadline(node, "connection refused")  # a failed poll, just in time
    assert node.state is NodeState.READY
    await asyncio.sleep(0.4)  # no poll comes (none would for another interval)
    assert node.state is NodeState.DOWN
    assert "connection refused" in node.reason
    await manager.close()
