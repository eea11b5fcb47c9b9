"""``cube sim-fleet``: many simulated workers in one process, for benchmarks and demos."""

from __future__ import annotations

import asyncio
import sys

import click

from cube.api.server import make_server, serve
from cube.auth import new_token
from cube.cli.credentials import (
    JOIN_TOKEN_ENV,
    JOIN_TOKEN_FILE,
    Security,
    find_token,
    security_options,
)
from cube.cli.errors import EXIT_FAILED, handle_errors
from cube.cli.options import SIZE, parse_labels
from cube.log import get_logger, setup_logging
from cube.node import Resources
from cube.worker.fleet import Fleet

log = get_logger("cube.cli")


@click.command("sim-fleet")
@click.option(
    "--count", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Workers."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5600, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--manager",
    "manager_url",
    envvar="CUBE_MANAGER",
    metavar="URL",
    help="Register every worker with this manager, e.g. http://127.0.0.1:5555.",
)
@click.option(
    "--advertise",
    metavar="URL",
    help="This server's URL as the manager should use it  [default: http://HOST:PORT]",
)
@click.option("--prefix", default="sim", show_default=True, help="Worker names: PREFIX-0001...")
@click.option(
    "--cpu",
    default=4.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="CPU cores each worker offers.",
)
@click.option(
    "--memory", default="8GiB", show_default=True, type=SIZE, help="Memory each worker offers."
)
@click.option(
    "--disk", default="100GiB", show_default=True, type=SIZE, help="Disk each worker offers."
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Label of every worker (repeatable).",
)
@click.option(
    "--token",
    help="The token the workers' APIs accept  [default: a new random one, given to the manager]",
)
@click.option(
    "--join-token",
    envvar=JOIN_TOKEN_ENV,
    help="The manager's join token  [default: the local manager's join-token file]",
)
@security_options
@click.option(
    "--log-level",
    default="warning",
    type=click.Choice(["debug", "info", "warning"]),
    show_default=True,
)
@handle_errors
def sim_fleet_command(
    count: int,
    host: str,
    port: int,
    manager_url: str | None,
    advertise: str | None,
    prefix: str,
    cpu: float,
    memory: int,
    disk: int,
    labels: tuple[str, ...],
    token: str | None,
    join_token: str | None,
    security: Security,
    log_level: str,
) -> None:
    """Run a fleet of simulated workers, for benchmarks and demos: their containers are fake.

    Each worker is a real Cube worker agent (task runners, states, restarts, its HTTP
    API) whose container runtime is an in-memory fake: a "container" runs until it
    is stopped, and nothing is executed. All workers share one server; worker NAME
    answers under http://HOST:PORT/w/NAME/v1/... and registers with the manager
    under that address.

    \b
    Example:
      cube manager --port 5555 &
      cube sim-fleet --count 1000 --port 5600 --manager http://127.0.0.1:5555
      cube nodes
    """
    setup_logging(log_level)
    fleet = Fleet(
        count=count,
        capacity=Resources(cpu=cpu, memory=memory, disk=disk),
        token=token or new_token(),
        prefix=prefix,
        labels=parse_labels(labels),
    )
    server = make_server(fleet.app, host=host, port=port, tls=security.tls)
    base_url = advertise or f"{security.scheme}://{host}:{port}"
    if manager_url and not join_token:
        join_token = find_token(manager_url, JOIN_TOKEN_FILE).token
    log.warning("starting simulated fleet", workers=count, address=base_url, manager=manager_url)

    async def join() -> None:
        if manager_url:
            await fleet.join(manager_url, base_url, join_token=join_token, verify=security.verify)

    if not asyncio.run(serve(server, after_start=join)):
        sys.exit(EXIT_FAILED)
