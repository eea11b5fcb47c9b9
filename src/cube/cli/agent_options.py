"""The options ``cube manager``, ``cube worker`` and ``cube dev`` share, and their
translation into the settings of :mod:`cube.agents`."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cube.agents import NodeConfig
from cube.cli.credentials import JOIN_TOKEN_ENV, TOKEN_ENV, data_root
from cube.cli.options import SIZE, parse_labels
from cube.job.spec import DEFAULT_DATACENTER
from cube.scheduler import ALGORITHMS, DEFAULT_ALGORITHM
from cube.store.files import claim_data_dir, secure_data_dir
from cube.task.spec import NAME_PATTERN, Privilege

DEFAULT_MANAGER_PORT = 5555
DEFAULT_WORKER_PORT = 5556


def default_data_dir(role: str) -> Path:
    return data_root() / role


def agent_data_dir(given: Path | None, role: str) -> Path:
    """The directory to use (created if needed): the one given, else the default for ``role``.

    Private (see cube.store.files): besides the token files it holds the store, and a
    manager's store keeps every worker's token (a token that can run containers on that
    worker). The agent's umask makes whatever it creates later private too (SQLite's
    -wal and -shm files, a token file).
    """
    os.umask(0o077)
    path = given or default_data_dir(role)
    secure_data_dir(path)
    claim_data_dir(path)  # one agent per data dir: a second one exits 1 naming the first
    return path


# --- shared options ------------------------------------------------------------------------------
def store_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--store",
        "store_kind",
        type=click.Choice(["sqlite", "memory"]),
        default="sqlite",
        show_default=True,
        help="Where state is kept: sqlite survives restarts.",
    )(func)


def log_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--log-level",
        default="info",
        type=click.Choice(["debug", "info", "warning"]),
        show_default=True,
    )(func)


def scheduler_option(func: Callable[..., None]) -> Callable[..., None]:
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
        :func:`cube.job.eligibility.datacenter_of`), which a ``--label`` may not contradict."""
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

    def config(self) -> NodeConfig:
        """The wiring's settings from these flags (click errors for contradictory ones)."""
        return NodeConfig(
            cpu=self.cpu,
            memory=self.memory,
            disk=self.disk,
            labels=self.node_labels(),
            allow=[Privilege(p) for p in self.allow],
            port_address=self.port_address,
        )


def _datacenter_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(NAME_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a DNS label (a-z, 0-9, -)")
    return value


def _ip_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value)) if value else ""
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address") from None


def node_options(func: Callable[..., None]) -> Callable[..., None]:
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


def manager_options(func: Callable[..., None]) -> Callable[..., None]:
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
