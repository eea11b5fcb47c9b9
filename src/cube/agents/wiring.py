"""Building the agents' objects (store, runtime, manager or worker, HTTP server) and
running them until a signal.

Nothing here reads a command line, a token file or the environment: the caller resolves
those (the CLI in :mod:`cube.cli.agents`) and passes plain values, so that the code that
builds a running process is shared by every way of starting one (as Nomad's
``command/agent`` is apart from its flags).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cube.api.server import Server, make_server, serve
from cube.api.tls import Tls, Verify
from cube.auth import Authenticator, Role
from cube.heap import freeze_survivors, heap_reports_on_signal
from cube.manager import Manager, WorkerClient
from cube.manager import create_app as manager_app
from cube.node import NODE_SECRET_FILE, Resources
from cube.runtime.docker import DockerRuntime
from cube.scheduler import make_scheduler
from cube.store import Store, StoreKind, open_store
from cube.task.spec import Privilege
from cube.worker import MachineSampler, Worker
from cube.worker import create_app as worker_app
from cube.worker.join import join_manager


@dataclass(frozen=True)
class NodeConfig:
    """What a worker offers to the cluster; None: what the machine has."""

    cpu: float | None = None
    memory: int | None = None
    disk: int | None = None
    labels: dict[str, str] | None = None
    allow: Sequence[Privilege] = ()
    #: Publish task ports on this address only ("" : every address).
    port_address: str = ""


@dataclass
class WorkerParts:
    worker: Worker
    runtime: DockerRuntime
    store: Store


def build_worker(
    name: str,
    data: Path,
    store_kind: StoreKind,
    node: NodeConfig,
    *,
    joins: bool = False,
    stop_after_disconnect: float | None = None,
) -> WorkerParts:
    sampler = MachineSampler(data)
    found = sampler.capacity()
    capacity = Resources(
        cpu=node.cpu if node.cpu is not None else found.cpu,
        memory=node.memory if node.memory is not None else found.memory,
        disk=node.disk if node.disk is not None else found.disk,
    )
    store = open_store(store_kind, data)
    runtime = DockerRuntime(port_address=node.port_address)
    worker = Worker(
        name=name,
        runtime=runtime,
        store=store,
        capacity=capacity,
        sampler=sampler,
        labels=dict(node.labels or {}),
        allow=list(node.allow),
        wait_for_assignment=joins,
        stop_after_disconnect=stop_after_disconnect,
    )
    return WorkerParts(worker, runtime, store)


def worker_server(
    worker: Worker,
    token: str,
    *,
    host: str,
    port: int,
    tls: Tls | None = None,
    readers: dict[Role, list[str]] | None = None,
    metrics_open: bool = False,
) -> Server:
    """The worker's HTTP API, answering the manager that presents ``token``, and
    ``readers`` (role -> tokens) for GET /metrics, or anyone with ``metrics_open``."""
    auth = Authenticator({Role.MANAGER: [token], **(readers or {})})
    app = worker_app(worker, authenticator=auth, metrics_open=metrics_open)
    return make_server(app, host=host, port=port, tls=tls)


def join_hook(
    parts: WorkerParts,
    manager_url: str,
    *,
    name: str,
    address: str,
    token: str,
    join_token: str | None,
    data: Path,
    verify: Verify,
) -> Callable[[], Awaitable[None]]:
    """A hook for :func:`run_servers`: once the worker listens, join the manager and
    take its answer (the tasks that are the worker's)."""

    async def join() -> None:
        answer = await join_manager(
            manager_url,
            name=name,
            address=address,
            token=token,
            join_token=join_token,
            secret_file=data / NODE_SECRET_FILE,
            running=parts.worker.adopted_running(),
            verify=verify,
        )
        parts.worker.joined(answer)

    return join


@dataclass(frozen=True)
class ManagerParts:
    manager: Manager
    store: Store
    authenticator: Authenticator
    #: The tokens that may read GET /metrics (a dev cluster's worker takes them too).
    metrics_readers: dict[Role, list[str]]


def build_manager(
    data: Path,
    *,
    store_kind: StoreKind,
    scheduler: str,
    static_workers: Sequence[str],
    worker_token: str | None,
    collect_interval: float,
    node_timeout: float,
    user_token: str,
    join_token: str,
    metrics_token: str,
    verify: Verify,
) -> ManagerParts:
    """A manager, its store, and who may call it: users with ``user_token``, workers
    joining with ``join_token``, Prometheus with ``metrics_token`` (GET /metrics only).
    ``static_workers``: URLs of workers to use without them joining, which accept
    ``worker_token``."""
    store = open_store(store_kind, data)
    manager = Manager(
        store=store,
        scheduler=make_scheduler(scheduler),
        workers=WorkerClient(timeout=max(2.0, collect_interval * 2), verify=verify),
        static_workers=static_workers,
        static_token=worker_token,
        collect_interval=collect_interval,
        node_timeout=node_timeout,
    )
    readers = {Role.USER: [user_token], Role.METRICS: [metrics_token]}
    authenticator = Authenticator({**readers, Role.JOIN: [join_token]})
    return ManagerParts(manager, store, authenticator, readers)


def manager_server(
    parts: ManagerParts,
    *,
    host: str,
    port: int,
    tls: Tls | None = None,
    metrics_open: bool = False,
) -> Server:
    """The manager's HTTP API (GET /metrics without a token with ``metrics_open``)."""
    app = manager_app(parts.manager, authenticator=parts.authenticator, metrics_open=metrics_open)
    return make_server(app, host=host, port=port, tls=tls)


def run_servers(
    *servers: Server,
    stores: list[Store],
    runtimes: list[DockerRuntime],
    after_start: Callable[[], Awaitable[None]] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> bool:
    """Serve until a signal; then close the runtimes and the stores. False if a server
    did not start (or ``after_start`` failed)."""

    async def main() -> bool:
        try:
            return await serve(*servers, after_start=after_start, on_exit=on_exit)
        finally:
            for runtime in runtimes:
                await runtime.close()

    freeze_survivors()  # no long GC pauses as records pile up (see cube.heap)
    heap_reports_on_signal()  # only with CUBE_HEAP_REPORTS set (debugging)
    try:
        return asyncio.run(main())
    finally:
        for store in stores:
            store.close()
