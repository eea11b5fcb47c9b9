"""The translation between Cube's container types and the Docker Engine API's JSON.

Apart from :mod:`cube.runtime.docker`, which makes the HTTP calls: these are pure
functions of what is sent or answered (a create body, an inspect or stats answer, a
log stream's framing, an image name, a refusal's message), so each can be read against
the Engine API's documentation, and tested, without an engine.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from cube.runtime.base import ContainerConfig, ContainerInfo, ContainerStats
from cube.task.model import PublishedPort
from cube.task.spec import Protocol


def split_image(image: str) -> tuple[str, str]:
    """``"repo/app:1.2"`` -> ``("repo/app", "1.2")``; the tag defaults to ``latest``."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, digest
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, "latest"


#: How engines say that their address pools have no subnet left for one more network
#: (Docker 23 and later; before).
POOLS_EXHAUSTED = (
    "could not find an available, non-overlapping IPv4 address pool",
    "all predefined address pools have been fully subnetted",
)


def network_refused(name: str, message: str) -> str:
    """Why the engine would not create network ``name``, and, when its address pools are
    used up, what to do about it.

    By default an engine gives each bridge network a /16 or /20 of a few ranges, about 30
    networks in all: past that many allocations of several tasks, new ones fail here.
    """
    why = f"network {name}: {message}"
    if not any(marker in message for marker in POOLS_EXHAUSTED):
        return why
    return (
        f"{why} (the Docker engine has no address pool left for another network: give it"
        ' more with "default-address-pools" in /etc/docker/daemon.json, e.g.'
        ' [{"base": "10.200.0.0/16", "size": 24}] for 256 networks, then restart dockerd)'
    )


def create_body(config: ContainerConfig, *, port_address: str = "") -> dict[str, Any]:
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in config.ports:
        key = f"{port.container}/{port.protocol.value}"
        exposed[key] = {}
        if port.host is not None:
            bindings.setdefault(key, []).append(
                {
                    "HostIp": port.host_ip or port_address,
                    "HostPort": str(port.host) if port.host else "",
                }
            )
    body: dict[str, Any] = {
        "Image": config.image,
        "Cmd": config.command or None,
        "Env": [f"{k}={v}" for k, v in config.env.items()],
        "Labels": config.labels,
        "ExposedPorts": exposed,
        "HostConfig": {
            "NanoCpus": int(config.cpu * 1e9),
            "Memory": config.memory,
            "MemorySwap": config.memory,  # no swap beyond the limit: OOM is visible, not slow
            "PortBindings": bindings,
            "RestartPolicy": {"Name": "no"},  # Cube restarts tasks itself, per its policy
            "Privileged": config.privileged,
            "NetworkMode": config.network,
            "Binds": [
                f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in config.mounts
            ],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        },
    }
    if config.network not in _ENGINE_NETWORKS:
        # A user-defined network: the engine's DNS answers for the aliases there.
        endpoint = {"Aliases": config.aliases} if config.aliases else {}
        body["NetworkingConfig"] = {"EndpointsConfig": {config.network: endpoint}}
    return body


#: Networks every engine has; aliases mean nothing on them.
_ENGINE_NETWORKS = frozenset({"bridge", "host", "none", "default"})


def _parse_time(value: str | None) -> datetime | None:
    if not value or value.startswith("0001-"):
        return None
    # Docker gives nanoseconds; Python's fromisoformat takes at most microseconds.
    head, dot, rest = value.partition(".")
    if dot:
        frac = rest.rstrip("Z")
        tz = ""
        for sign in ("+", "-"):
            if sign in frac:
                frac, _, tzpart = frac.partition(sign)
                tz = sign + tzpart
        value = f"{head}.{frac[:6]}{tz or '+00:00'}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def info_from_inspect(data: dict[str, Any]) -> ContainerInfo:
    state = data.get("State") or {}
    host = data.get("HostConfig") or {}
    ports: list[PublishedPort] = []
    for key, binds in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        number, _, proto = key.partition("/")
        for bind in _without_ipv6_twins(binds or []):
            ip = bind.get("HostIp") or ""
            ports.append(
                PublishedPort(
                    container=int(number),
                    host=int(bind["HostPort"]),
                    protocol=Protocol(proto),
                    host_ip="" if ip in ("0.0.0.0", "::") else ip,
                )
            )
    running = bool(state.get("Running"))
    return ContainerInfo(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        image=(data.get("Config") or {}).get("Image", ""),
        labels=(data.get("Config") or {}).get("Labels") or {},
        status=state.get("Status", "unknown"),
        running=running,
        exit_code=None if running or state.get("Status") == "created" else state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        error=state.get("Error") or "",
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        ports=ports,
        cpu=(host.get("NanoCpus") or 0) / 1e9,
        memory=host.get("Memory") or 0,
        ip=_container_ip(data.get("NetworkSettings") or {}),
    )


def _without_ipv6_twins(binds: list[dict[str, str]]) -> list[dict[str, str]]:
    """A port published on every address is listed twice, 0.0.0.0 and :: (with another host
    port when Docker picked a free one, on 20.10): keep the IPv4 one, as clients use it."""
    if any(b.get("HostIp") == "0.0.0.0" for b in binds):
        return [b for b in binds if b.get("HostIp") != "::"]
    return binds


def _container_ip(network: dict[str, Any]) -> str:
    if network.get("IPAddress"):
        return str(network["IPAddress"])
    for attached in (network.get("Networks") or {}).values():
        if attached.get("IPAddress"):
            return str(attached["IPAddress"])
    return ""


def stats_from_engine(data: dict[str, Any]) -> ContainerStats:
    cpu = data.get("cpu_stats") or {}
    pre = data.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or 1
    percent = cpu_delta / system_delta * online * 100.0 if system_delta > 0 else 0.0
    memory = data.get("memory_stats") or {}
    return ContainerStats(
        cpu_percent=max(0.0, percent),
        memory_usage=int(memory.get("usage", 0)),
        memory_limit=int(memory.get("limit", 0)),
    )


async def demultiplex(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Undo Docker's stdout/stderr framing: an 8-byte header (stream, size) per frame."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 8:
            (size,) = struct.unpack(">I", buffer[4:8])
            if len(buffer) < 8 + size:
                break
            yield buffer[8 : 8 + size]
            buffer = buffer[8 + size :]
    if buffer:
        yield buffer
