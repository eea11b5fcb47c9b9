"""The Docker Engine API, spoken directly over its Unix socket with httpx.

Why not the ``docker`` SDK or aiodocker: Cube already uses httpx for every other
HTTP conversation, the handful of Engine endpoints it needs are easy to read in
plain form (each method below is one documented API call), and owning the event
and log streams lets the worker reconnect on its own terms after an engine restart.
What is sent and answered, translated to and from Cube's types, is
:mod:`cube.runtime.docker_json`'s.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
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
from cube.runtime.docker_json import (
    create_body,
    demultiplex,
    info_from_inspect,
    network_refused,
    split_image,
    stats_from_engine,
)
from cube.runtime.exec import ExecSession, docker_exec
from cube.runtime.pulls import SharedPulls

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
            json=create_body(config, port_address=self.port_address),
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
        return info_from_inspect(response.json())

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
                async for chunk in demultiplex(response.aiter_bytes()):
                    yield chunk
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None

    async def stats(self, container_id: str) -> ContainerStats:
        response = await self._call(
            "GET", f"/containers/{container_id}/stats", params={"stream": "false"}
        )
        return stats_from_engine(response.json())

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
