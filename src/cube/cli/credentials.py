"""Where the CLI and the agents find their tokens and TLS files.

Tokens are looked up in this order: the flag, its environment variable, then the
token files a manager on this machine wrote in its default data directories, so
that `cube dev` followed by `cube status` needs no setup at all.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cube.api.tls import Tls, Verify, client_verify
from cube.auth import JOIN_TOKEN_FILE, TOKEN_FILE, load_or_create_token, read_token

TOKEN_ENV = "CUBE_TOKEN"
JOIN_TOKEN_ENV = "CUBE_JOIN_TOKEN"
WORKER_TOKEN_ENV = "CUBE_WORKER_TOKEN"
CA_ENV = "CUBE_CA"


def data_root() -> Path:
    return Path(os.environ.get("CUBE_DATA_DIR") or Path.home() / ".local" / "share" / "cube")


def local_manager_dirs() -> list[Path]:
    """Data directories a manager on this machine uses by default (`cube manager`, `cube dev`)."""
    root = data_root()
    return [root / "manager", root / "dev" / "manager"]


def find_local_token(filename: str) -> str | None:
    """The newest token file of that name among the local managers' data directories."""
    found = [d / filename for d in local_manager_dirs() if (d / filename).is_file()]
    if not found:
        return None
    return read_token(max(found, key=lambda p: p.stat().st_mtime))


def own_token(given: str | None, data: Path, filename: str) -> tuple[str, str]:
    """An agent's own token: the one given, else the one in its data dir (made if missing).

    Returns the token and where it came from, to tell the user.
    """
    if given:
        return given, "the command line/environment"
    path = data / filename
    return load_or_create_token(path), str(path)


@dataclass(frozen=True)
class Security:
    """An agent's TLS settings: its own certificate, and the CA it trusts as a client."""

    tls: Tls | None
    ca: str | None

    @property
    def verify(self) -> Verify:
        return client_verify(self.ca)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def security_options(func: Callable[..., None]) -> Callable[..., None]:
    """``--tls-cert/--tls-key/--ca``, passed on as ``security=Security(...)``."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        cert, key, ca = kwargs.pop("tls_cert"), kwargs.pop("tls_key"), kwargs.pop("ca")
        if (cert is None) != (key is None):
            raise click.UsageError("--tls-cert and --tls-key go together")
        tls = Tls(cert=cert, key=key) if cert is not None and key is not None else None
        func(security=Security(tls=tls, ca=str(ca) if ca else None), **kwargs)

    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option("--tls-cert", type=path, help="Serve HTTPS with this certificate (PEM)."),
        click.option("--tls-key", type=path, help="The certificate's private key (PEM)."),
        click.option(
            "--ca", type=path, envvar=CA_ENV, help="CA bundle to trust when calling other agents."
        ),
    ]
    out: Callable[..., None] = wrapper
    for option in reversed(options):
        out = option(out)
    return out


__all__ = [
    "CA_ENV",
    "JOIN_TOKEN_ENV",
    "JOIN_TOKEN_FILE",
    "TOKEN_ENV",
    "TOKEN_FILE",
    "WORKER_TOKEN_ENV",
    "Security",
    "find_local_token",
    "local_manager_dirs",
    "own_token",
    "security_options",
]
