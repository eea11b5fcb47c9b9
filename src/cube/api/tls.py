"""TLS settings of a server: kept apart from the server module so clients need not import it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

#: What an HTTP client is told to trust: the system's CAs (True), or a context with ours.
Verify = ssl.SSLContext | bool


@dataclass(frozen=True)
class Tls:
    """A server's certificate and key (PEM files)."""

    cert: Path
    key: Path


def client_verify(ca: str | Path | None) -> Verify:
    """What a client passes to httpx as ``verify``: the system's CAs, or only ``ca``.

    An ``ssl.SSLContext`` rather than the file's path, which httpx 0.28 deprecates.
    """
    return ssl.create_default_context(cafile=str(ca)) if ca else True


def shared_verify(verify: Verify) -> Verify:
    """``verify`` as one context that many clients can share: httpx builds a context for
    every client given ``True`` (milliseconds each, for each of a thousand nodes)."""
    if verify is True:
        return ssl.create_default_context()
    return verify
