"""The Docker Engine API for the benchmarks, and the Cube agents they start.

The direct-Docker baseline speaks to the engine the way Cube's worker does: the same
Engine API calls (create, then start) over the same Unix socket with httpx, creating
the same containers (image, command, CPU and memory limits, labels, log settings).
Every container and service a benchmark creates carries :data:`BENCH_LABEL` with the
run's ID, so cleaning up removes exactly what this run made and nothing of anybody
else's on a shared engine.

Not part of the ``cube`` package: the scripts in ``bench/`` put this directory on
``sys.path`` by being run as ``python bench/NAME.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import agent_env

IMAGE = "cube-busybox:latest"
COMMAND = ("sleep", "600")
#: The CPU limit of every benchmark container. Not smaller: a container's start runs in its
#: own cgroup, so a limit of 0.01 CPU throttles runc's start-up to 1 % of a core and adds
#: about 2.5 s to every start (measured here), which would time CFS throttling, not
#: orchestration. Cube's node offers :data:`NODE_CPU` so that 100 such tasks fit: a CPU
#: limit caps a container, it reserves nothing, and ``sleep`` uses none.
CPU = 0.5
NODE_CPU = 64
MEMORY = 8 * 1024**2
#: Label on every container and service a benchmark creates itself; value: the run's ID.
BENCH_LABEL = "cube.bench"
API = "http://docker/v1.41"
#: Where runs keep the agents' data and logs (not /tmp: others sweep it on this machine).
WORKDIR = "/var/tmp"
SOCKET = "/var/run/docker.sock"


def run_id() -> str:
    """A short ID for this run: in container, service and worker names, and labels."""
    return f"b{secrets.token_hex(3)}"


def parse_docker_time(value: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as a Unix timestamp."""
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


def container_body(*, labels: Mapping[str, str]) -> dict[str, Any]:
    """What Cube's worker sends to ``POST /containers/create`` for a benchmark task."""
    return {
        "Image": IMAGE,
        "Cmd": list(COMMAND),
        "Env": [],
        "Labels": dict(labels),
        "ExposedPorts": {},
        "HostConfig": {
            "NanoCpus": int(CPU * 1e9),
            "Memory": MEMORY,
            "MemorySwap": MEMORY,
            "PortBindings": {},
            "RestartPolicy": {"Name": "no"},
            "Privileged": False,
            "NetworkMode": "bridge",
            "Binds": [],
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        },
    }


class EngineError(RuntimeError):
    pass


class Engine:
    """The few Engine API calls the benchmarks need."""

    def __init__(self, socket_path: str = SOCKET) -> None:
        self._http = httpx.AsyncClient(
            # The limits go on the transport: a client given a transport ignores its own.
            transport=httpx.AsyncHTTPTransport(
                uds=socket_path,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
            ),
            base_url=API,
            timeout=httpx.Timeout(120.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise EngineError(f"{method} {path}: {response.status_code} {response.text.strip()}")
        return response

    # --- containers ----------------------------------------------------------------------------
    async def run(self, name: str, *, labels: Mapping[str, str]) -> str:
        """Create and start one container (what ``docker run -d`` does); its ID."""
        created = await self._call(
            "POST", "/containers/create", params={"name": name}, json=container_body(labels=labels)
        )
        container_id: str = created.json()["Id"]
        await self._call("POST", f"/containers/{container_id}/start")
        return container_id

    async def containers(self, labels: Mapping[str, str], *, running: bool) -> list[dict[str, Any]]:
        filters: dict[str, list[str]] = {"label": [f"{k}={v}" for k, v in labels.items()]}
        if running:
            filters["status"] = ["running"]
        response = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)}
        )
        rows: list[dict[str, Any]] = response.json()
        return rows

    @contextlib.asynccontextmanager
    async def starts(
        self, labels: Mapping[str, str], into: asyncio.Queue[str]
    ) -> AsyncIterator[None]:
        """While in the block, put the ``cube.task-id`` of every container with ``labels``
        that starts into ``into`` (Docker's event stream: nothing is polled)."""
        filters = {
            "type": ["container"],
            "event": ["start"],
            "label": [f"{k}={v}" for k, v in labels.items()],
        }
        subscribed = asyncio.Event()

        async def follow() -> None:
            async with self._http.stream(
                "GET",
                "/events",
                params={"filters": json.dumps(filters)},
                timeout=httpx.Timeout(30.0, read=None),
            ) as response:
                subscribed.set()
                async for line in response.aiter_lines():
                    if line.strip():
                        attributes = json.loads(line).get("Actor", {}).get("Attributes", {})
                        into.put_nowait(attributes.get("cube.task-id", ""))

        task = asyncio.create_task(follow())
        try:
            await asyncio.wait_for(subscribed.wait(), 30)
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        response = await self._http.get(f"/containers/{container_id}/json")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise EngineError(f"inspect {container_id}: {response.text.strip()}")
        data: dict[str, Any] = response.json()
        return data

    async def kill(self, container_id: str) -> None:
        await self._call("POST", f"/containers/{container_id}/kill")

    async def remove(self, container_ids: Sequence[str]) -> None:
        sem = asyncio.Semaphore(16)

        async def one(cid: str) -> None:
            async with sem:
                response = await self._http.delete(f"/containers/{cid}", params={"force": "true"})
                if response.status_code not in (204, 404, 409):
                    raise EngineError(f"remove {cid}: {response.text.strip()}")

        await asyncio.gather(*(one(c) for c in container_ids))

    async def remove_labelled(self, labels: Mapping[str, str]) -> int:
        """Force-remove every container carrying all of ``labels``; how many."""
        ids = [row["Id"] for row in await self.containers(labels, running=False)]
        await self.remove(ids)
        return len(ids)

    async def remove_cube_containers(self, *, worker_prefix: str) -> int:
        """Force-remove Cube's containers of every worker whose name starts with the prefix."""
        rows = await self.containers({"cube.managed-by": "cube"}, running=False)
        ids = [
            r["Id"]
            for r in rows
            if (r.get("Labels") or {}).get("cube.worker", "").startswith(worker_prefix)
        ]
        await self.remove(ids)
        return len(ids)

    async def remove_networks(self, labels: Mapping[str, str]) -> int:
        """Remove every network carrying all of ``labels`` (after its containers); how many."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        response = await self._call("GET", "/networks", params={"filters": json.dumps(filters)})
        ids = [row["Id"] for row in response.json()]
        for network_id in ids:
            gone = await self._http.delete(f"/networks/{network_id}")
            if gone.status_code not in (204, 404):
                raise EngineError(f"remove network {network_id}: {gone.text.strip()}")
        return len(ids)

    # --- swarm ---------------------------------------------------------------------------------
    async def swarm_state(self) -> str:
        info = (await self._call("GET", "/info")).json()
        return str((info.get("Swarm") or {}).get("LocalNodeState", "inactive"))

    async def network_exists(self, name: str) -> bool:
        return (await self._http.get(f"/networks/{name}")).status_code == 200

    async def create_service(self, name: str, *, replicas: int, labels: Mapping[str, str]) -> str:
        """``docker service create --replicas N --no-resolve-image`` with the same limits."""
        spec = {
            "Name": name,
            "Labels": dict(labels),
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": IMAGE,
                    "Args": list(COMMAND),
                    "Labels": dict(labels),
                },
                "Resources": {"Limits": {"NanoCPUs": int(CPU * 1e9), "MemoryBytes": MEMORY}},
                "RestartPolicy": {"Condition": "none"},
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
        }
        response = await self._call("POST", "/services/create", json=spec)
        service_id: str = response.json()["ID"]
        return service_id

    async def service_running(self, service_id: str) -> int:
        """How many of the service's tasks Swarm reports Running (``docker service ps``)."""
        filters = {"service": [service_id], "desired-state": ["running"]}
        response = await self._call("GET", "/tasks", params={"filters": json.dumps(filters)})
        return sum(1 for t in response.json() if (t.get("Status") or {}).get("State") == "running")

    async def remove_service(self, service_id: str) -> None:
        response = await self._http.delete(f"/services/{service_id}")
        if response.status_code not in (200, 404):
            raise EngineError(f"remove service: {response.text.strip()}")

    async def services(self, labels: Mapping[str, str]) -> list[str]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        response = await self._http.get("/services", params={"filters": json.dumps(filters)})
        if response.status_code != 200:
            return []  # not a swarm manager: no services
        return [s["ID"] for s in response.json()]


async def until(
    check: Callable[[], Awaitable[bool]], *, what: str, limit: float = 60.0, every: float = 0.05
) -> None:
    """Wait until ``check()`` is true, asking every ``every`` seconds; TimeoutError after
    ``limit`` seconds. A check that fails to reach its server counts as false."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out after {limit:g}s waiting for {what}")


# --- CPU accounting ------------------------------------------------------------------------------
#: The engine's long-lived processes (each container's shim is left out: it comes and goes).
ENGINE_PROCESSES = ("dockerd", "containerd")


def engine_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ENGINE_PROCESSES]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds used between construction and :meth:`read` by the engine, by this
    process (the benchmark's client), and by ``agent`` (a Cube process) if given."""

    def __init__(self, agent: int | None = None) -> None:
        self._agent = [agent] if agent is not None else []
        self._engine = engine_pids()
        self._start = self._now()

    def _now(self) -> tuple[float, float, float]:
        return cpu_seconds(self._agent), cpu_seconds(self._engine), time.process_time()

    def read(self) -> tuple[float, float, float]:
        """(agent, engine, client) CPU seconds since the meter was made."""
        now = self._now()
        agent, engine, client = (b - a for a, b in zip(self._start, now, strict=True))
        return agent, engine, client


# --- Cube agents ----------------------------------------------------------------------------------
def free_port(count: int = 1) -> int:
    """A free TCP port on 127.0.0.1 followed by ``count - 1`` more free ones."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + count > 65535:
            continue
        if all(_port_free(p) for p in range(port + 1, port + count)):
            return port
    raise RuntimeError("no run of free ports found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Agent:
    """A ``cube`` agent (``dev``, ``manager`` or ``worker``) as a real process."""

    args: list[str]
    url: str
    log_path: Path
    token_path: Path | None = None
    #: Extra environment for the process (e.g. PYTHONPATH to try a dependency).
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, *, timeout: float = 30.0) -> float:
        """Start the process; the seconds until ``/v1/health`` answered."""
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cube", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=agent_env(**self.env),
            )
        self.wait_healthy(timeout=timeout)
        return time.monotonic() - started

    def wait_healthy(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited early; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.url} did not answer /v1/health in {timeout}s")

    def headers(self) -> dict[str, str]:
        """``Authorization`` for the manager, if it keeps a token in its data directory."""
        if self.token_path is not None and self.token_path.is_file():
            return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}
        return {}

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


def token_file(data_dir: Path) -> Path:
    """Where the manager keeps its token, if it has one (``cube dev`` nests it)."""
    nested = data_dir / "manager" / "token"
    return nested if (data_dir / "manager").is_dir() else data_dir / "token"


def task_body(name: str, *, restart: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A benchmark task for Cube's ``POST /v1/tasks``."""
    body: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "command": list(COMMAND),
        "resources": {"cpu": CPU, "memory": MEMORY, "disk": 0},
        "stop_timeout": "1s",
    }
    if restart is not None:
        body["restart"] = dict(restart)
    return body
