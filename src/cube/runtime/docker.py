"""The Docker Engine API, spoken directly over its Unix socket with httpx.

Why not the ``docker`` SDK or aiodocker: Cube already uses httpx for every other
HTTP conversation, the handful of Engine endpoints it needs are easy to read in
plain form (each method below is one documented API call), and owning the event
and log streams lets the worker reconnect on its own terms after an engine restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from cube.errors import ContainerError, NotFound, RuntimeUnavailable
from cube.runtime.base import (
    ContainerConfig,
    ContainerInfo,
    ContainerStats,
    ContainerSummary,
    NetworkSummary,
    ProgressCallback,
)
from cube.runtime.exec import ExecSession, docker_exec
from cube.runtime.pulls import SharedPulls
from cube.task.model import PublishedPort
from cube.task.spec import Protocol

DEFAULT_SOCKET = "/var/run/docker.sock"
#: Engine API version: 1.41 is Docker 20.10, the oldest engine Cube supports.
API_VERSION = "v1.41"


def socket_from_env() -> str:
    """The engine's socket path, from DOCKER_HOST (unix:// only) or the default."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else DEFAULT_SOCKET


class DockerRuntime:
    """:class:`~cube.runtime.base.ContainerRuntime` on a local Docker engine."""

    def __init__(
        self, *, socket: str | None = None, pull_timeout: float = 600.0, port_address: str = ""
    ) -> None:
        self.socket = socket or socket_from_env()
        self.pull_timeout = pull_timeout
        #: Where a port that names no ``host_ip`` is published: "" is every address
        #: (Docker's 0.0.0.0 and ::), else one (``cube worker --port-address``).
        self.port_address = port_address
        self._client = httpx.AsyncClient(
            # The limits go on the transport: a client given a transport ignores its own.
            # No cap on connections: a short call must never queue behind the log and
            # event streams (and pulls) that hold theirs open for minutes.
            transport=httpx.AsyncHTTPTransport(
                uds=self.socket,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
            ),
            base_url=f"http://docker/{API_VERSION}",
            # Log and event streams stay open; short calls are bounded per request.
            timeout=httpx.Timeout(30.0, read=None),
        )
        self._pulls = SharedPulls(self._find_or_pull)
        #: Network name -> the lock its creation takes (see ensure_network).
        self._network_locks: dict[str, asyncio.Lock] = {}

    # --- plumbing ------------------------------------------------------------------------------
    async def _call(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204, 304), **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        if response.status_code not in ok:
            raise _engine_error(response)
        return response

    def _unavailable(self, exc: Exception) -> RuntimeUnavailable:
        why = str(exc) or type(exc).__name__
        return RuntimeUnavailable(f"cannot reach the Docker engine at unix://{self.socket}: {why}")

    # --- ContainerRuntime ----------------------------------------------------------------------
    async def ping(self) -> None:
        # On a new connection, not one of the pool: a stopping dockerd closes its socket
        # first, then stops its containers, answering all the while on the connections
        # already open. A pooled ping would call a stopping engine up.
        transport = httpx.AsyncHTTPTransport(uds=self.socket)
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://docker/{API_VERSION}", timeout=10.0
        ) as client:
            try:
                response = await client.get("/_ping")
            except httpx.TransportError as exc:
                raise self._unavailable(exc) from None
        if response.status_code != 200:
            raise _engine_error(response)

    async def run(
        self, config: ContainerConfig, *, on_progress: ProgressCallback | None = None
    ) -> ContainerInfo:
        await self.ensure_image(config.image, on_progress=on_progress)
        created = await self._call(
            "POST",
            "/containers/create",
            params={"name": config.name},
            json=_create_body(config, port_address=self.port_address),
        )
        container_id: str = created.json()["Id"]
        try:
            await self._call("POST", f"/containers/{container_id}/start")
        except ContainerError:
            await self.remove(container_id)
            raise
        info = await self.inspect(container_id)
        if info is None:
            raise ContainerError(f"container {config.name} vanished right after it started")
        return info

    async def stop(self, container_id: str, *, grace: float) -> None:
        try:
            await self._call(
                "POST",
                f"/containers/{container_id}/stop",
                params={"t": max(0, round(grace))},
                timeout=grace + 30.0,
            )
        except NotFound:
            return

    async def remove(self, container_id: str) -> None:
        try:
            await self._call("DELETE", f"/containers/{container_id}", params={"force": "true"})
        except NotFound:
            return
        except ContainerError as exc:
            if "already in progress" not in exc.message:  # a concurrent remove won the race
                raise

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        try:
            response = await self._call("GET", f"/containers/{container_id}/json")
        except NotFound:
            return None
        return _info_from_inspect(response.json())

    async def list(self, labels: Mapping[str, str]) -> list[ContainerSummary]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        response = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)}
        )
        return [
            ContainerSummary(
                id=row["Id"],
                name=(row.get("Names") or ["/"])[0].lstrip("/"),
                labels=row.get("Labels") or {},
                running=row.get("State") == "running",
            )
            for row in response.json()
        ]

    async def exits(self, labels: Mapping[str, str]) -> AsyncIterator[str]:
        filters = {
            "type": ["container"],
            "event": ["die"],
            "label": [f"{k}={v}" for k, v in labels.items()],
        }
        try:
            async with self._client.stream(
                "GET", "/events", params={"filters": json.dumps(filters)}
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _engine_error(response)
                async for line in response.aiter_lines():
                    if line.strip():
                        event = json.loads(line)
                        yield event.get("id") or event["Actor"]["ID"]
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None

    async def logs(
        self,
        container_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        since: float | None = None,
    ) -> AsyncIterator[bytes]:
        params = {
            "stdout": "true",
            "stderr": "true",
            "follow": "true" if follow else "false",
            "tail": "all" if tail is None else str(tail),
        }
        if since is not None:
            params["since"] = f"{since:.6f}"  # the engine takes seconds with a fraction
        info = await self.inspect(container_id)
        if info is None:
            raise NotFound(f"container {container_id} not found")
        try:
            async with self._client.stream(
                "GET", f"/containers/{container_id}/logs", params=params
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _engine_error(response)
                async for chunk in _demultiplex(response.aiter_bytes()):
                    yield chunk
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None

    async def stats(self, container_id: str) -> ContainerStats:
        response = await self._call(
            "GET", f"/containers/{container_id}/stats", params={"stream": "false"}
        )
        return _stats_from_engine(response.json())

    async def exec(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> ExecSession:
        return await docker_exec(
            self._client, self.socket, API_VERSION, container_id, command, stdin=stdin, tty=tty
        )

    async def ensure_network(self, name: str, *, labels: Mapping[str, str]) -> str:
        # The engine does not refuse a second network of the same name (CheckDuplicate is
        # best effort, and ignored since API 1.44): concurrent creates here would make two,
        # and containers would land on either. So creates of one name take turns.
        lock = self._network_locks.setdefault(name, asyncio.Lock())
        async with lock:
            try:
                found = await self._call("GET", f"/networks/{name}")
                return str(found.json()["Id"])
            except NotFound:
                pass
            body = {"Name": name, "Driver": "bridge", "Labels": dict(labels)}
            try:
                created = await self._call("POST", "/networks/create", json=body)
            except ContainerError as exc:
                raise ContainerError(network_refused(name, exc.message)) from None
            return str(created.json()["Id"])

    async def remove_network(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self._call("DELETE", f"/networks/{name}")
        self._network_locks.pop(name, None)

    async def networks(self, labels: Mapping[str, str]) -> builtins.list[NetworkSummary]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        response = await self._call("GET", "/networks", params={"filters": json.dumps(filters)})
        return [
            NetworkSummary(id=row["Id"], name=row["Name"], labels=row.get("Labels") or {})
            for row in response.json()
        ]

    async def close(self) -> None:
        await self._client.aclose()

    # --- images --------------------------------------------------------------------------------
    async def ensure_image(
        self, image: str, *, on_progress: ProgressCallback | None = None
    ) -> None:
        await self._pulls(image, on_progress)

    async def _find_or_pull(self, image: str, on_progress: ProgressCallback) -> None:
        try:
            await self._call("GET", f"/images/{image}/json")
            return
        except NotFound:
            pass
        name, tag = split_image(image)
        on_progress(f"pulling image {image}")
        try:
            async with self._client.stream(
                "POST",
                "/images/create",
                params={"fromImage": name, "tag": tag},
                timeout=httpx.Timeout(30.0, read=self.pull_timeout),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _engine_error(response, prefix=f"pull {image}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise ContainerError(f"pull {image}: {message['error']}")
                    if message.get("status"):
                        on_progress(
                            f"pull {image}: {message['status']} {message.get('progress', '')}"
                        )
        except httpx.TimeoutException:
            raise ContainerError(
                f"pull {image}: no progress for {self.pull_timeout:.0f}s"
            ) from None
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None


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


def _engine_error(response: httpx.Response, *, prefix: str = "") -> Exception:
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text or f"HTTP {response.status_code}"
    message = message.strip()
    if prefix:
        message = f"{prefix}: {message}"
    if response.status_code == 404:
        return NotFound(message)
    return ContainerError(message)


def _create_body(config: ContainerConfig, *, port_address: str = "") -> dict[str, Any]:
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


def _info_from_inspect(data: dict[str, Any]) -> ContainerInfo:
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


def _stats_from_engine(data: dict[str, Any]) -> ContainerStats:
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


async def _demultiplex(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
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
