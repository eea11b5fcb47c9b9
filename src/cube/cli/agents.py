"""``cube worker``: the long-running agent processes."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import click
import uvicorn

from cube.api.server import make_server
from cube.cli.errors import handle_errors
from cube.cli.options import SIZE, parse_labels
from cube.log import get_logger, setup_logging
from cube.node import Resources
from cube.runtime.docker import DockerRuntime
from cube.store import open_store
from cube.worker import MachineSampler, Worker, create_app

log = get_logger("cube.cli")


def default_data_dir(role: str, name: str) -> Path:
    base = os.environ.get("CUBE_DATA_DIR") or Path.home() / ".local" / "share" / "cube"
    return Path(base) / f"{role}-{name}"


@click.command("worker")
@click.option(
    "--name",
    default=socket.gethostname,
    show_default="hostname",
    help="Node name, unique in the cluster.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5556, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the worker keeps its state  [default: ~/.local/share/cube/worker-NAME]",
)
@click.option(
    "--store",
    "store_kind",
    type=click.Choice(["sqlite", "memory"]),
    default="sqlite",
    show_default=True,
)
@click.option(
    "--cpu", type=click.FloatRange(min=0, min_open=True), help="CPU cores to offer  [default: all]"
)
@click.option("--memory", type=SIZE, help="Memory to offer, e.g. 4GiB  [default: all]")
@click.option("--disk", type=SIZE, help="Disk to offer, e.g. 20GiB  [default: data disk size]")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Node label for placement constraints (repeatable).",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
@handle_errors
def worker_command(
    name: str,
    host: str,
    port: int,
    data_dir: Path | None,
    store_kind: str,
    cpu: float | None,
    memory: int | None,
    disk: int | None,
    labels: tuple[str, ...],
    log_level: str,
) -> None:
    """Run a worker agent: runs tasks on this machine as Docker containers.

    SIGTERM or Ctrl-C stops the agent and leaves task containers running; the
    next start adopts them.

    \b
    Example:
      cube worker --name w1 --port 5556
      curl -X POST localhost:5556/v1/tasks -d @examples/sleeper.json
    """
    setup_logging(log_level)
    node_labels = parse_labels(labels)
    data = data_dir or default_data_dir("worker", name)
    data.mkdir(parents=True, exist_ok=True)
    sampler = MachineSampler(data)
    found = sampler.capacity()
    capacity = Resources(
        cpu=cpu if cpu is not None else found.cpu,
        memory=memory if memory is not None else found.memory,
        disk=disk if disk is not None else found.disk,
    )
    store = open_store(store_kind, data)  # type: ignore[arg-type]
    runtime = DockerRuntime()
    worker = Worker(
        name=name,
        runtime=runtime,
        store=store,
        capacity=capacity,
        sampler=sampler,
        labels=node_labels,
    )
    server = make_server(create_app(worker), host=host, port=port)
    log.info(
        "starting worker",
        node=name,
        address=f"http://{host}:{port}",
        data_dir=str(data),
        store=store_kind,
    )
    try:
        asyncio.run(_serve(server, runtime))
    finally:
        store.close()
    if not server.started:
        raise SystemExit(1)


async def _serve(server: uvicorn.Server, runtime: DockerRuntime) -> None:
    try:
        await server.serve()
    finally:
        await runtime.close()
