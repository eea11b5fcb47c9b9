"""``cube manager``, ``cube worker`` and ``cube dev``: the long-running agent processes."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from cube.agents import (
    ManagerParts,
    build_manager,
    build_worker,
    join_hook,
    manager_server,
    run_servers,
    worker_server,
)
from cube.auth import Role
from cube.cli.agent_options import (
    DEFAULT_MANAGER_PORT,
    DEFAULT_WORKER_PORT,
    NodeOptions,
    agent_data_dir,
    log_option,
    manager_options,
    node_options,
    scheduler_option,
    store_option,
)
from cube.cli.credentials import (
    JOIN_TOKEN_ENV,
    JOIN_TOKEN_FILE,
    TOKEN_ENV,
    TOKEN_FILE,
    WORKER_TOKEN_ENV,
    Security,
    address_claim,
    join_token_for,
    own_token,
    security_options,
)
from cube.cli.errors import EXIT_FAILED, handle_errors
from cube.cli.metrics import MetricsAccess, metrics_options
from cube.cli.options import optional_duration_callback
from cube.log import get_logger, setup_logging
from cube.store import StoreKind

log = get_logger("cube.cli")


def _exit_unless(started: bool) -> None:
    """Exit 1 if a server could not start (see :func:`cube.agents.run_servers`)."""
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
@store_option
@node_options
@security_options
@metrics_options
@log_option
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
    data = agent_data_dir(data_dir, f"worker-{name}")
    parts = build_worker(
        name,
        data,
        store_kind,
        node.config(),
        joins=bool(manager_url),
        stop_after_disconnect=stop_after_disconnect,
    )
    worker_token, source = own_token(token, data, TOKEN_FILE)
    server = worker_server(
        parts.worker,
        worker_token,
        host=host,
        port=port,
        tls=security.tls,
        readers={Role.METRICS: metrics.worker_tokens(manager_url)},
        metrics_open=metrics.open,
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
    join = None
    if manager_url:
        join = join_hook(
            parts,
            manager_url,
            name=name,
            address=address,
            token=worker_token,
            join_token=join_token_for(join_token, manager_url),
            data=data,
            verify=security.verify,
        )
    _exit_unless(
        run_servers(
            server,
            stores=[parts.store],
            runtimes=[parts.runtime],
            after_start=join,
            on_exit=parts.worker.feed.close,
        )
    )


# --- cube manager --------------------------------------------------------------------------------
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
    """A manager from its options, with its credentials: the cluster token and the join
    token (given, else read from or created in ``data``)."""
    user, user_source = own_token(token, data, TOKEN_FILE)
    join, join_source = own_token(join_token, data, JOIN_TOKEN_FILE)
    log.info(
        "cluster token",
        file=user_source,
        use=f"export {TOKEN_ENV}=$(cat {user_source})" if user_source.startswith("/") else "",
    )
    log.info("join token for workers", file=join_source)
    return build_manager(
        data,
        store_kind=store_kind,
        scheduler=scheduler,
        static_workers=[_as_url(a, security.scheme) for a in workers.split(",") if a.strip()],
        worker_token=worker_token,
        collect_interval=collect_interval,
        node_timeout=node_timeout,
        user_token=user,
        join_token=join,
        metrics_token=metrics.manager_token(data),
        verify=security.verify,
    )


def _as_url(address: str, scheme: str) -> str:
    address = address.strip()
    return address if "://" in address else f"{scheme}://{address}"


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
@scheduler_option
@store_option
@manager_options
@security_options
@metrics_options
@log_option
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
    data = agent_data_dir(data_dir, "manager")
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
    server = manager_server(
        parts, host=host, port=port, tls=security.tls, metrics_open=metrics.open
    )
    claim, release = address_claim(host, port, data)
    _exit_unless(
        run_servers(server, stores=[parts.store], runtimes=[], after_start=claim, on_exit=release)
    )


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
@scheduler_option
@store_option
@manager_options
@node_options
@metrics_options
@log_option
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
    data = agent_data_dir(data_dir, "dev")
    worker_port = port + 1
    worker_data = agent_data_dir(data / "worker", "dev")
    parts = build_worker(name, worker_data, store_kind, node.config())
    worker_token, _ = own_token(None, worker_data, TOKEN_FILE)
    plain = Security(tls=None, ca=None)  # loopback only
    manager_data = agent_data_dir(data / "manager", "dev")
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
    servers = (
        manager_server(control, host="127.0.0.1", port=port, metrics_open=metrics.open),
        worker_server(
            parts.worker,
            worker_token,
            host="127.0.0.1",
            port=worker_port,
            readers=control.metrics_readers,
            metrics_open=metrics.open,
        ),
    )
    log.info(
        "starting dev cluster",
        manager=f"http://127.0.0.1:{port}",
        worker=f"http://127.0.0.1:{worker_port}",
        data_dir=str(data),
    )
    claim, release = address_claim("127.0.0.1", port, manager_data)

    def on_exit() -> None:
        release()
        parts.worker.feed.close()

    _exit_unless(
        run_servers(
            *servers,
            stores=[parts.store, control.store],
            runtimes=[parts.runtime],
            after_start=claim,
            on_exit=on_exit,
        )
    )
