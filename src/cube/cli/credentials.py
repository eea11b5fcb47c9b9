"""Where the CLI and the agents find their tokens and TLS files.

Tokens are looked up in this order: the flag, its environment variable, then the
token file of the manager at the address called, when that manager runs on this
machine (it leaves a pointer to its data directory under ``DATA_ROOT/addresses``),
then the token files a manager on this machine wrote in its default data directories,
so that `cube dev` followed by `cube status` needs no setup at all. Whatever was
used is named when the manager refuses it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx

from cube.api.tls import Tls, Verify, client_verify
from cube.auth import JOIN_TOKEN_FILE, TOKEN_FILE, load_or_create_token, read_token
from cube.log import get_logger

log = get_logger("cube.cli")

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


# --- which manager owns an address: a pointer file per port


def address_dir() -> Path:
    return data_root() / "addresses"


def _pointer(port: int) -> Path:
    return address_dir() / f"{port}.json"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def claim_address(host: str, port: int, data_dir: Path) -> Path | None:
    """Record that the manager of ``data_dir`` (this process) listens on ``host:port``,
    so that a CLI on this machine calling that address uses this manager's token files.

    Returns the pointer file, for :func:`release_address`; ``None`` for port 0 (the
    port is the kernel's choice) or when it cannot be written (it is only a hint).
    """
    if port == 0:
        return None
    path = _pointer(port)
    record = {"host": host, "port": port, "data_dir": str(data_dir.resolve()), "pid": os.getpid()}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        return None
    return path


def release_address(path: Path | None) -> None:
    """Remove the pointer :func:`claim_address` wrote, unless another manager took it over."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def manager_dir_at(url: str) -> Path | None:
    """The data directory of the manager on this machine that listens at ``url``, if its
    pointer says so and its process is alive."""
    try:
        parsed = httpx.URL(url if "://" in url else f"http://{url}")
    except httpx.InvalidURL:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        record = json.loads(_pointer(port).read_text(encoding="utf-8"))
        host, data_dir, pid = str(record["host"]), str(record["data_dir"]), record["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    if parsed.host != host.strip("[]") and not _loopback(parsed.host) and not _wildcard(host):
        return None  # the same port on another machine
    return Path(data_dir)


# --- finding a token


@dataclass(frozen=True)
class FoundToken:
    """A token to send, and where it came from: named when the manager refuses it."""

    token: str | None
    #: The file it was read from, or the option/environment variable.
    source: str = ""
    #: Where a token file was looked for, when none was found.
    searched: list[Path] = field(default_factory=list)

    def hint(self, *, option: str, env: str) -> str:
        """What to tell a user whose token the manager refused (or who sent none)."""
        if self.token is None:
            where = ", ".join(str(p) for p in self.searched) or "(nowhere)"
            return f"no token given with {option} or {env}, and no token file at {where}"
        return f"the token sent came from {self.source}; give the right one with {option} or {env}"


def find_token(manager_url: str | None, filename: str) -> FoundToken:
    """The token file ``filename`` of the manager at ``manager_url`` when it runs on this
    machine, else the newest one among the local managers' default data directories."""
    if manager_url and (owner := manager_dir_at(manager_url)) is not None:
        path = owner / filename
        if path.is_file():
            return FoundToken(read_token(path), str(path))
        # That manager was given its token on its command line: no file to find.
        return FoundToken(None, searched=[path])
    candidates = [d / filename for d in local_manager_dirs()]
    found = [p for p in candidates if p.is_file()]
    if not found:
        return FoundToken(None, searched=candidates)
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return FoundToken(read_token(newest), str(newest))


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


# --- what an agent claims and presents


def join_token_for(given: str | None, manager_url: str) -> str | None:
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


def address_claim(
    host: str, port: int, data: Path
) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    """Hooks for :func:`cube.agents.run_servers`: once the manager listens, point its
    address at its data dir (for the CLI to find the right token); on exit, take the
    pointer back."""
    claimed: list[Path | None] = []

    async def claim() -> None:
        claimed.append(claim_address(host, port, data))

    def release() -> None:
        for path in claimed:
            release_address(path)

    return claim, release


__all__ = [
    "CA_ENV",
    "JOIN_TOKEN_ENV",
    "JOIN_TOKEN_FILE",
    "TOKEN_ENV",
    "TOKEN_FILE",
    "WORKER_TOKEN_ENV",
    "FoundToken",
    "Security",
    "address_claim",
    "claim_address",
    "find_token",
    "join_token_for",
    "local_manager_dirs",
    "manager_dir_at",
    "own_token",
    "release_address",
    "security_options",
]
