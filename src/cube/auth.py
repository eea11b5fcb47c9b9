"""Credentials: who may call which API.

Three kinds of bearer token, each a random 256-bit secret kept in a file of mode 0600:

* the **cluster token** (manager data dir, ``token``): users and the CLI; it can do anything
  on the manager;
* the **join token** (manager data dir, ``join-token``): lets a worker register itself, and
  nothing else, so handing it to a machine does not hand out the cluster;
* each **worker token** (worker data dir, ``token``): the only credential its worker API
  accepts. The worker gives it to the manager when it joins, so only the manager (and root
  on the worker's machine) can tell a worker what to run;
* the **metrics token** (manager data dir, ``metrics-token``): reads ``GET /metrics`` of
  the manager, and of the workers given it, and nothing else: the one to hand to Prometheus.

Tokens are compared in constant time; only ``GET /v1/health`` is open (and ``GET
/metrics`` of an agent started with ``--metrics-open``).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path

from cube.errors import CubeError

TOKEN_FILE = "token"
JOIN_TOKEN_FILE = "join-token"
METRICS_TOKEN_FILE = "metrics-token"


class Role(StrEnum):
    USER = "user"  # the cluster token
    JOIN = "join"  # a worker registering
    MANAGER = "manager"  # the manager calling a worker
    METRICS = "metrics"  # Prometheus reading GET /metrics


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new one is written there (mode 0600) if the file is missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path)
    except OSError as exc:  # a read-only or full data dir: one line naming the file
        raise CubeError(f"cannot create token file {path}: {exc.strerror}") from None
    token = new_token()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CubeError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise CubeError(f"token file {path} is empty")
    return token


def same(given: str, expected: str) -> bool:
    """Constant-time comparison: how long it takes says nothing about how much matched."""
    return hmac.compare_digest(given.encode(), expected.encode())


class Authenticator:
    """Maps a presented token to the roles it grants.

    Each role has a source of valid tokens: a fixed list, or a function (the manager's
    worker tokens change as workers join, but workers never need to call the manager
    with them, so the manager only ever checks users and joins).
    """

    def __init__(self, roles: dict[Role, Callable[[], Iterable[str]] | Iterable[str]]) -> None:
        self._roles = {
            role: source if callable(source) else (lambda s=tuple(source): s)
            for role, source in roles.items()
        }

    def roles_of(self, token: str) -> set[Role]:
        granted: set[Role] = set()
        for role, source in self._roles.items():
            # Compare against every token (no early exit) so timing does not leak which matched.
            if any([same(token, t) for t in source()]):  # noqa: C419
                granted.add(role)
        return granted
