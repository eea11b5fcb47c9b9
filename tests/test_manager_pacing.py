"""The manager's loops pace themselves by the CPU they use, not by the time they wait.

A real manager (in this process, memory store) collecting from a node whose address
is a real TCP socket that accepts connections and never answers: each collection pass
waits for the HTTP timeout, and must not make the manager wait as long again before
the next pass (every other node's data would get twice as old).
"""

from __future__ import annotations

import asyncio

from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import Node, Resources
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
