"""``--metrics-token`` and ``--metrics-open``: who may read an agent's ``GET /metrics``.

The manager has a read-only **metrics token** (``DATA_DIR/metrics-token``, created like
the join token) to hand to Prometheus. A worker accepts it too when told it
(``--metrics-token`` or ``CUBE_METRICS_TOKEN``), or when it finds the token file of its
manager on the same machine; besides, as every call, its own token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cube.auth import METRICS_TOKEN_FILE
from cube.cli.credentials import find_token, own_token
from cube.log import get_logger

log = get_logger("cube.cli")

METRICS_TOKEN_ENV = "CUBE_METRICS_TOKEN"


@dataclass(frozen=True)
class MetricsAccess:
    """The ``--metrics-*`` flags of one agent."""

    open: bool
    token: str | None

    def manager_token(self, data: Path) -> str:
        """The manager's metrics token: the one given, else its file (created if missing)."""
        token, source = own_token(self.token, data, METRICS_TOKEN_FILE)
        log.info("metrics token for Prometheus", file=source, open=self.open)
        return token

    def worker_tokens(self, manager_url: str | None) -> list[str]:
        """The metrics tokens a worker accepts: the one given, else the token file of its
        manager when it runs on this machine; none otherwise."""
        if self.token:
            return [self.token]
        if not manager_url:
            return []
        found = find_token(manager_url, METRICS_TOKEN_FILE)
        if found.token is None:
            hint = found.hint(option="--metrics-token", env=METRICS_TOKEN_ENV)
            log.info("GET /metrics takes only this worker's token", why=hint)
            return []
        log.info("metrics token", file=found.source)
        return [found.token]


def metrics_options(func: Callable[..., None]) -> Callable[..., None]:
    """``--metrics-token`` and ``--metrics-open``, passed on as ``metrics=MetricsAccess``."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        access = MetricsAccess(open=kwargs.pop("metrics_open"), token=kwargs.pop("metrics_token"))
        func(metrics=access, **kwargs)

    options = [
        click.option(
            "--metrics-token",
            envvar=METRICS_TOKEN_ENV,
            metavar="TOKEN",
            help="A read-only token for GET /metrics, to give Prometheus  [default: the "
            "manager's DATA_DIR/metrics-token (created if missing); on a worker, that "
            "file of its manager if it runs on this machine]",
        ),
        click.option(
            "--metrics-open",
            is_flag=True,
            help="Serve GET /metrics without a token (to a Prometheus on a trusted network).",
        ),
    ]
    out: Callable[..., None] = wrapper
    for option in reversed(options):
        out = option(out)
    return out
