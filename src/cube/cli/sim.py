"""``cube sim-fleet``: many simulated workers, for benchmarks and demos.

One process serves them all, or ``--processes N`` processes each serve a slice of the
names on a port of their own (PORT, PORT+1, ...): one Python process saturates one core
at a few thousand workers (py-spy, 96 % busy at 2,065 of 5,000 joined), and then answers
the manager late enough to fail its joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType

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
from cube.worker.fleet import Fleet, fleet_slice

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
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes to run the workers in, each a slice of them on its own port (PORT+i).",
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
    processes: int,
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

    With --processes N, N processes each serve a slice of the workers on ports PORT to
    PORT+N-1, so that the fleet is not one saturated core.

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
    if processes > 1 and (advertise or port == 0):
        raise click.UsageError("--processes above 1 needs a --port (not 0) and no --advertise")
    if processes > count:
        raise click.UsageError(f"--processes {processes} is more than --count {count}")
    if manager_url and not join_token:
        join_token = find_token(manager_url, JOIN_TOKEN_FILE).token
    plan = FleetPlan(
        count=count,
        host=host,
        port=port,
        manager_url=manager_url,
        advertise=advertise,
        prefix=prefix,
        capacity=Resources(cpu=cpu, memory=memory, disk=disk),
        labels=parse_labels(labels),
        token=token or new_token(),
        join_token=join_token,
        security=security,
        log_level=log_level,
    )
    ok = run_slice(plan, 0, 1) if processes == 1 else run_processes(plan, processes)
    if not ok:
        sys.exit(EXIT_FAILED)


@dataclass(frozen=True)
class FleetPlan:
    """What every process of a fleet needs to serve its slice (picklable, for spawn)."""

    count: int
    host: str
    port: int
    manager_url: str | None
    advertise: str | None
    prefix: str
    capacity: Resources
    labels: dict[str, str]
    token: str
    join_token: str | None
    security: Security
    log_level: str


def run_slice(plan: FleetPlan, index: int, processes: int) -> bool:
    """Serve slice ``index`` of ``processes`` of the fleet's workers (all of them for one),
    on PORT+index, and join them to the manager; True if it ran and stopped cleanly."""
    setup_logging(plan.log_level)
    first, count = fleet_slice(plan.count, index, processes)
    fleet = Fleet(
        count=count,
        capacity=plan.capacity,
        token=plan.token,
        prefix=plan.prefix,
        labels=plan.labels,
        first=first,
        width=max(4, len(str(plan.count))),
    )
    port = plan.port + index
    server = make_server(fleet.app, host=plan.host, port=port, tls=plan.security.tls)
    base_url = plan.advertise or f"{plan.security.scheme}://{plan.host}:{port}"
    log.warning(
        "starting simulated fleet", workers=count, address=base_url, manager=plan.manager_url
    )
    manager_url = plan.manager_url

    async def join() -> None:
        if manager_url:
            await fleet.join(
                manager_url, base_url, join_token=plan.join_token, verify=plan.security.verify
            )

    return asyncio.run(serve(server, after_start=join, on_exit=fleet.stopping))


def run_processes(plan: FleetPlan, processes: int) -> bool:
    """Run the slices in ``processes`` processes until they stop; a SIGTERM or SIGINT here
    is passed on to each. True if every one stopped cleanly."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_slice_main, args=(plan, i, processes), name=f"sim-fleet-{i}")
        for i in range(processes)
    ]
    for child in children:
        child.start()

    def stop(signum: int, _: FrameType | None) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.join()
    return all(child.exitcode == 0 for child in children)


def _slice_main(plan: FleetPlan, index: int, processes: int) -> None:
    if not run_slice(plan, index, processes):
        sys.exit(EXIT_FAILED)
