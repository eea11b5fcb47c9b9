"""``cube manager``, ``cube worker`` and ``cube dev``: the long-running agent processes."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cube.api.server import Server, make_server, serve
from cube.auth import Authenticator, Role
from cube.cli.credentials import (
    JOIN_TOKEN_ENV,
    JOIN_TOKEN_FILE,
    TOKEN_ENV,
    TOKEN_FILE,
    WORKER_TOKEN_ENV,
    Security,
    claim_address,
    data_root,
    find_token,
    own_token,
    release_address,
    security_options,
)
from cube.cli.errors import EXIT_FAILED, handle_errors
from cube.cli.metrics import MetricsAccess, metrics_options
from cube.cli.options import SIZE, optional_duration_callback, parse_labels
from cube.heap import freeze_survivors
from cube.job.spec import DEFAULT_DATACENTER
from cube.log import get_logger, setup_logging
from cube.manager import Manager, WorkerClient
from cube.manager import create_app as manager_app
from cube.node import NODE_SECRET_FILE, Resources
from cube.runtime.docker import DockerRuntime
from cube.scheduler import ALGORITHMS, DEFAULT_ALGORITHM, make_scheduler
from cube.store import Store, StoreKind, open_store
from cube.store.files import secure_data_dir
from cube.task.spec import NAME_PATTERN, Privilege
from cube.worker import MachineSampler, Worker
from cube.worker import create_app as worker_app
from cube.worker.join import join_manager

log = get_logger("cube.cli")

DEFAULT_MANAGER_PORT = 5555
DEFAULT_WORKER_PORT = 5556


def default_data_dir(role: str) -> Path:
    return data_root() / role


def _data_dir(given: Path | None, role: str) -> Path:
    """The directory to use (created if needed): the one given, else the default for ``role``.

    Private (see cube.store.files): besides the token files it holds the store, and a
    manager's store keeps every worker's token (a token that can run containers on that
    worker). The agent's umask makes whatever it creates later private too (SQLite's
    -wal and -shm files, a token file).
    """
    os.umask(0o077)
    path = given or default_data_dir(role)
    secure_data_dir(path)
    return path


# --- shared options ------------------------------------------------------------------------------
def _store_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--store",
        "store_kind",
        type=click.Choice(["sqlite", "memory"]),
        default="sqlite",
        show_default=True,
        help="Where state is kept: sqlite survives restarts.",
    )(func)


def _log_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--log-level",
        default="info",
        type=click.Choice(["debug", "info", "warning"]),
        show_default=True,
    )(func)


def _scheduler_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--scheduler",
        type=click.Choice(ALGORITHMS),
        default=DEFAULT_ALGORITHM,
        show_default=True,
        help="Placement algorithm.",
    )(func)


@dataclass(frozen=True)
class NodeOptions:
    """What a worker offers to the cluster, from its command-line flags."""

    cpu: float | None
    memory: int | None
    disk: int | None
    labels: tuple[str, ...]
    allow: tuple[str, ...]
    datacenter: str | None = None
    port_address: str = ""

    def node_labels(self) -> dict[str, str]:
        """The labels the node reports: ``--label`` ones, and ``datacenter`` (see
        :func:`cube.job.reconcile.datacenter_of`), which a ``--label`` may not contradict."""
        labels = parse_labels(self.labels)
        if self.datacenter is None:
            labels.setdefault("datacenter", DEFAULT_DATACENTER)
        elif labels.setdefault("datacenter", self.datacenter) != self.datacenter:
            raise click.BadParameter(
                f"--label datacenter={labels['datacenter']} contradicts --datacenter"
                f" {self.datacenter}",
                param_hint="--label",
            )
        return labels


def _datacenter_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(NAME_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a DNS label (a-z, 0-9, -)")
    return value


def _ip_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address") from None


def _node_options(func: Callable[..., None]) -> Callable[..., None]:
    """Add the worker's capacity, label and privilege flags, passed on as ``node=NodeOptions``."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        keys = ("cpu", "memory", "disk", "labels", "allow", "datacenter", "port_address")
        node = NodeOptions(*(kwargs.pop(k) for k in keys))
        func(node=node, **kwargs)

    options = [
        click.option(
            "--cpu",
            type=click.FloatRange(min=0, min_open=True),
            help="CPU cores to offer  [default: all]",
        ),
        click.option("--memory", type=SIZE, help="Memory to offer, e.g. 4GiB  [default: all]"),
        click.option("--disk", type=SIZE, help="Disk to offer  [default: size of the data disk]"),
        click.option(
            "--label",
            "labels",
            multiple=True,
            metavar="KEY=VALUE",
            help="Node label for placement constraints (repeatable).",
        ),
        click.option(
            "--allow",
            multiple=True,
            type=click.Choice([p.value for p in Privilege]),
            help="Let tasks here ask for this (repeatable). Off by default: privileged "
            "containers, the host's network and host mounts all escape isolation.",
        ),
        click.option(
            "--datacenter",
            callback=_datacenter_name,
            help=f"The datacenter this node is in; jobs name the datacenters they run in"
            f"  [default: {DEFAULT_DATACENTER}]",
        ),
        click.option(
            "--port-address",
            default="",
            callback=_ip_address,
            metavar="IP",
            help="Publish task ports on this address only, unless a port names its own "
            "(IP:HOST:CONTAINER)  [default: every address, 0.0.0.0 and ::]",
        ),
    ]
    out: Callable[..., None] = wrapper
    for option in reversed(options):
        out = option(out)
    return out


@dataclass
class WorkerParts:
    worker: Worker
    runtime: DockerRuntime
    store: Store


def _build_worker(
    name: str,
    data: Path,
    store_kind: StoreKind,
    node: NodeOptions,
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
        labels=node.node_labels(),
        allow=[Privilege(p) for p in node.allow],
        wait_for_assignment=joins,
        stop_after_disconnect=stop_after_disconnect,
    )
    return WorkerParts(worker, runtime, store)


def _run_servers(
    *servers: Server,
    stores: list[Store],
    runtimes: list[DockerRuntime],
    after_start: Callable[[], Awaitable[None]] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> None:
    async def main() -> bool:
        try:
            return await serve(*servers, after_start=after_start, on_exit=on_exit)
        finally:
            for runtime in runtimes:
                await runtime.close()

    freeze_survivors()  # no long GC pauses as records pile up (see cube.heap)
    try:
        started = asyncio.run(main())
    finally:
        for store in stores:
            store.close()
    if not started:
        sys.exit(EXIT_FAILED)


# --- cube worker ---------------------------------------------------------------------------------
@click.command("worker")
@click.option(
    "--name",
    default=socket.gethostname,
    show_default="hostname",
    help="Node name, unique in the cluster.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=DEFAULT_WORKER_PORT, show_default=True, type=click.IntRange(0, 65535)
)
@click.option(
    "--manager",
    "manager_url",
    envvar="CUBE_MANAGER",
    metavar="URL",
    help="Join this manager, e.g. http://127.0.0.1:5555.",
)
@click.option(
    "--advertise",
    metavar="URL",
    help="The URL the manager should use for this worker  [default: http://HOST:PORT]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the worker keeps its state  [default: ~/.local/share/cube/worker-NAME]",
)
@click.option(
    "--token",
    envvar=WORKER_TOKEN_ENV,
    help="The token this worker's API accepts  [default: DATA_DIR/token, created if missing]",
)
@click.option(
    "--join-token",
    envvar=JOIN_TOKEN_ENV,
    help="The manager's join token  [default: the join-token file of the manager at "
    "--manager, when it runs on this machine]",
)
@click.option(
    "--stop-after-disconnect",
    metavar="DURATION",
    callback=optional_duration_callback,
    help="Stop every task after this long without a call from the manager; 0: never  "
    "[default: the node timeout the manager tells it (at its join, with every call)]",
)
@_store_option
@_node_options
@security_options
@metrics_options
@_log_option
@handle_errors
def worker_command(
    name: str,
    host: str,
    port: int,
    manager_url: str | None,
    advertise: str | None,
    data_dir: Path | None,
    token: str | None,
    join_token: str | None,
    stop_after_disconnect: float | None,
    store_kind: StoreKind,
    node: NodeOptions,
    security: Security,
    metrics: MetricsAccess,
    log_level: str,
) -> None:
    """Run a worker agent: runs tasks on this machine as Docker containers.

    SIGTERM or Ctrl-C stops the agent and leaves task containers running; the
    next start adopts them.

    \b
    Example:
      cube worker --name w1 --port 5556 --manager http://127.0.0.1:5555
      cube worker --name big --port 5557 --cpu 8 --memory 16GiB --label zone=a
      cube worker --name e1 --port 5558 --datacenter eu1   # jobs with datacenters: [eu1]
    """
    setup_logging(log_level)
    data = _data_dir(data_dir, f"worker-{name}")
    parts = _build_worker(
        name,
        data,
        store_kind,
        node,
        joins=bool(manager_url),
        stop_after_disconnect=stop_after_disconnect,
    )
    worker_token, source = own_token(token, data, TOKEN_FILE)
    auth = Authenticator(
        {Role.MANAGER: [worker_token], Role.METRICS: metrics.worker_tokens(manager_url)}
    )
    server = make_server(
        worker_app(parts.worker, authenticator=auth, metrics_open=metrics.open),
        host=host,
        port=port,
        tls=security.tls,
    )
    address = advertise or f"{security.scheme}://{host}:{port}"
    log.info(
        "starting worker",
        node=name,
        address=address,
        data_dir=str(data),
        store=store_kind,
        token=source,
    )
    if manager_url:
        join_token = _join_token(join_token, manager_url)

    async def join() -> None:
        if manager_url:
            answer = await join_manager(
                manager_url,
                name=name,
                address=address,
                token=worker_token,
                join_token=join_token,
                secret_file=data / NODE_SECRET_FILE,
                running=parts.worker.adopted_running(),
                verify=security.verify,
            )
            parts.worker.joined(answer)

    _run_servers(
        server,
        stores=[parts.store],
        runtimes=[parts.runtime],
        after_start=join,
        on_exit=parts.worker.feed.close,
    )


def _join_token(given: str | None, manager_url: str) -> str | None:
    """The join token to present: the one given, else the join-token file of the manager
    at ``manager_url`` (or of a local manager); logged by source, never by value, so
    that a refusal in the log can be traced to the file."""
    if given:
        log.info("join token", source=f"--join-token or {JOIN_TOKEN_ENV}")
        return given
    found = find_token(manager_url, JOIN_TOKEN_FILE)
    if found.token is None:
        log.warning("no join token", why=found.hint(option="--join-token", env=JOIN_TOKEN_ENV))
    else:
        log.info("join token", file=found.source)
    return found.token


def _address_claim(
    host: str, port: int, data: Path
) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    """Hooks for :func:`_run_servers`: once the manager listens, point its address at its
    data dir (for the CLI to find the right token); on exit, take the pointer back."""
    claimed: list[Path | None] = []

    async def claim() -> None:
        claimed.append(claim_address(host, port, data))

    def release() -> None:
        for path in claimed:
            release_address(path)

    return claim, release


# --- cube manager --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManagerParts:
    manager: Manager
    store: Store
    authenticator: Authenticator
    #: The tokens that may read GET /metrics (a dev cluster's worker takes them too).
    metrics_readers: dict[Role, list[str]]


def _build_manager(
    data: Path,
    *,
    store_kind: StoreKind,
    scheduler: str,
    workers: str,
    worker_token: str | None,
    collect_interval: float,
    node_timeout: float,
    token: str | None,
    join_token: str | None,
    security: Security,
    metrics: MetricsAccess,
) -> ManagerParts:
    """A manager and its credentials: the cluster token and the join token."""
    user, user_source = own_token(token, data, TOKEN_FILE)
    join, join_source = own_token(join_token, data, JOIN_TOKEN_FILE)
    log.info(
        "cluster token",
        file=user_source,
        use=f"export {TOKEN_ENV}=$(cat {user_source})" if user_source.startswith("/") else "",
    )
    log.info("join token for workers", file=join_source)
    store = open_store(store_kind, data)
    manager = Manager(
        store=store,
        scheduler=make_scheduler(scheduler),
        workers=WorkerClient(timeout=max(2.0, collect_interval * 2), verify=security.verify),
        static_workers=[_as_url(a, security.scheme) for a in workers.split(",") if a.strip()],
        static_token=worker_token,
        collect_interval=collect_interval,
        node_timeout=node_timeout,
    )
    readers = {Role.USER: [user], Role.METRICS: [metrics.manager_token(data)]}
    auth = Authenticator({**readers, Role.JOIN: [join]})
    return ManagerParts(manager, store, auth, readers)


def _as_url(address: str, scheme: str) -> str:
    address = address.strip()
    return address if "://" in address else f"{scheme}://{address}"


def _manager_options(func: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option(
                "--collect-interval",
                type=click.FloatRange(min=0.05),
                default=1.0,
                show_default=True,
                help="Seconds between two polls of every node (longer above 100 nodes: "
                "at most 100 polls a second).",
            ),
            click.option(
                "--node-timeout",
                type=click.FloatRange(min=0.1),
                default=10.0,
                show_default=True,
                help="Seconds of silence before a node is Down (longer when the poll "
                "interval is stretched).",
            ),
            click.option(
                "--token",
                envvar=TOKEN_ENV,
                help="The cluster token users need  [default: DATA_DIR/token, created if missing]",
            ),
            click.option(
                "--join-token",
                envvar=JOIN_TOKEN_ENV,
                help="The token workers join with  [default: DATA_DIR/join-token, created]",
            ),
        ]
    ):
        func = option(func)
    return func


@click.command("manager")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=DEFAULT_MANAGER_PORT, show_default=True, type=click.IntRange(0, 65535)
)
@click.option(
    "--workers",
    default="",
    metavar="HOST:PORT,...",
    help="Workers to use without them registering, e.g. 10.0.0.5:5556,10.0.0.6:5556.",
)
@click.option(
    "--worker-token",
    envvar=WORKER_TOKEN_ENV,
    help="The token the --workers accept (start them with the same --token).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the manager keeps its state  [default: ~/.local/share/cube/manager]",
)
@_scheduler_option
@_store_option
@_manager_options
@security_options
@metrics_options
@_log_option
@handle_errors
def manager_command(
    host: str,
    port: int,
    workers: str,
    worker_token: str | None,
    data_dir: Path | None,
    scheduler: str,
    store_kind: StoreKind,
    collect_interval: float,
    node_timeout: float,
    token: str | None,
    join_token: str | None,
    security: Security,
    metrics: MetricsAccess,
    log_level: str,
) -> None:
    """Run the manager: accepts tasks, places them on workers, tracks them.

    \b
    Example:
      cube manager --port 5555 --scheduler epvm
      cube worker --name w1 --port 5556 --manager http://127.0.0.1:5555
      cube run examples/web.yaml --wait
    """
    setup_logging(log_level)
    data = _data_dir(data_dir, "manager")
    parts = _build_manager(
        data,
        store_kind=store_kind,
        scheduler=scheduler,
        workers=workers,
        worker_token=worker_token,
        collect_interval=collect_interval,
        node_timeout=node_timeout,
        token=token,
        join_token=join_token,
        security=security,
        metrics=metrics,
    )
    log.info(
        "starting manager",
        address=f"{security.scheme}://{host}:{port}",
        data_dir=str(data),
        scheduler=scheduler,
        store=store_kind,
    )
    app = manager_app(parts.manager, authenticator=parts.authenticator, metrics_open=metrics.open)
    server = make_server(app, host=host, port=port, tls=security.tls)
    claim, release = _address_claim(host, port, data)
    _run_servers(server, stores=[parts.store], runtimes=[], after_start=claim, on_exit=release)


# --- cube dev ------------------------------------------------------------------------------------
@click.command("dev")
@click.option(
    "--port",
    default=DEFAULT_MANAGER_PORT,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Manager port; the worker takes the next one.",
)
@click.option("--name", default="local", show_default=True, help="Name of the local worker.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State of both agents  [default: ~/.local/share/cube/dev]",
)
@_scheduler_option
@_store_option
@_manager_options
@_node_options
@metrics_options
@_log_option
@handle_errors
def dev_command(
    port: int,
    name: str,
    data_dir: Path | None,
    scheduler: str,
    store_kind: StoreKind,
    collect_interval: float,
    node_timeout: float,
    token: str | None,
    join_token: str | None,
    node: NodeOptions,
    metrics: MetricsAccess,
    log_level: str,
) -> None:
    """Run a one-node cluster in one process: a manager and a local worker, on 127.0.0.1.

    Like `nomad agent -dev`: everything you need to try Cube on one machine.
    Ctrl-C stops both agents; task containers keep running and are adopted next time.

    \b
    Example:
      cube dev
      cube run examples/web.yaml --wait     # in another terminal
      cube status
    """
    setup_logging(log_level)
    data = _data_dir(data_dir, "dev")
    worker_port = port + 1
    worker_data = _data_dir(data / "worker", "dev")
    parts = _build_worker(name, worker_data, store_kind, node)
    worker_token, _ = own_token(None, worker_data, TOKEN_FILE)
    plain = Security(tls=None, ca=None)  # loopback only
    manager_data = _data_dir(data / "manager", "dev")
    control = _build_manager(
        manager_data,
        store_kind=store_kind,
        scheduler=scheduler,
        workers=f"127.0.0.1:{worker_port}",
        worker_token=worker_token,
        collect_interval=collect_interval,
        node_timeout=node_timeout,
        token=token,
        join_token=join_token,
        security=plain,
        metrics=metrics,
    )
    worker_auth = Authenticator({Role.MANAGER: [worker_token], **control.metrics_readers})
    servers = (
        make_server(
            manager_app(
                control.manager, authenticator=control.authenticator, metrics_open=metrics.open
            ),
            host="127.0.0.1",
            port=port,
        ),
        make_server(
            worker_app(parts.worker, authenticator=worker_auth, metrics_open=metrics.open),
            host="127.0.0.1",
            port=worker_port,
        ),
    )
    log.info(
        "starting dev cluster",
        manager=f"http://127.0.0.1:{port}",
        worker=f"http://127.0.0.1:{worker_port}",
        data_dir=str(data),
    )
    claim, release = _address_claim("127.0.0.1", port, manager_data)

    def on_exit() -> None:
        release()
        parts.worker.feed.close()

    _run_servers(
        *servers,
        stores=[parts.store, control.store],
        runtimes=[parts.runtime],
        after_start=claim,
        on_exit=on_exit,
    )
