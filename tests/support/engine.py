"""The Docker engine as the tests see it: the test image, names tied to this session, and
the containers and networks Docker itself lists by label."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

IMAGE = "cube-busybox:latest"


SESSION = uuid.uuid4().hex[:6]


_counter = iter(range(1_000_000))


def unique_name(prefix: str = "w") -> str:
    """Names that tie every container a test creates to this test session."""
    return f"t{SESSION}-{prefix}{next(_counter)}"


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def containers_of(label: str, *, running_only: bool = False) -> list[str]:
    """IDs of containers carrying ``label`` (``key=value``), as Docker itself sees them."""
    args = ["ps", "-q", "--no-trunc", "--filter", f"label={label}"]
    if not running_only:
        args.insert(1, "-a")
    return docker(*args).split()


def remove_containers(label: str) -> None:
    ids = containers_of(label)
    if ids:
        docker("rm", "-f", *ids, check=False)


def networks_of(label: str) -> list[str]:
    """Names of networks carrying ``label`` (``key=value``), as Docker itself sees them."""
    return docker("network", "ls", "--filter", f"label={label}", "--format", "{{.Name}}").split()


def remove_networks(label: str) -> None:
    for name in networks_of(label):
        docker("network", "rm", name, check=False)


def sleeper(name: str = "sleeper", **extra: Any) -> dict[str, Any]:
    """A task spec of the test image sleeping, stopped within a second (``extra`` added)."""
    return {
        "name": name,
        "image": IMAGE,
        "command": ["sleep", "600"],
        "stop_timeout": "1s",
        **extra,
    }
