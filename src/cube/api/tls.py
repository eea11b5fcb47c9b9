"""TLS settings of a server: kept apart from the server module so clients need not import it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tls:
    """A server's certificate and key (PEM files)."""

    cert: Path
    key: Path
