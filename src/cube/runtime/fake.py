"""An in-memory container runtime: the fake that ships next to the real one.

It behaves like a tiny, instant Docker engine: containers "run" until a test (or a
simulation) makes them exit with :meth:`FakeRuntime.crash`, or until they are
stopped. Images named in ``missing_images`` fail to pull, like a registry 404;
errors put in ``start_errors`` are raised by the next starts, one each.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cube.errors import Conflict, ContainerError, NotFound, RuntimeUnavailable
from cube.runtime.base import (
    ContainerConfig,
    ContainerInfo,
    ContainerStats,
    ContainerSummary,
    NetworkSummary,
    ProgressCallback,
)
from cube.runtime.fake_exec import FakeExec
from cube.task.model import PublishedPort, utcnow


@dataclass
class _FakeContainer:
    info: ContainerInfo
    logs: list[bytes] = field(default_factory=list)
    network: str = "bridge"


class FakeRuntime:
    """:class:`~cube.runtime.base.ContainerRuntime` without an engine."""

    def __init__(self, *, missing_images: Iterable[str] = ()) -> None:
        self.missing_images = set(missing_images)
        self.available = True
        #: Raised by the next calls of :meth:`run`, after the pull, first one first: e.g.
        #: NotFound for a container removed between its create and its start.
        self.start_errors: list[Exception] = []
        self.containers: dict[str, _FakeContainer] = {}
        self._exit_queues: list[tuple[Mapping[str, str], asyncio.Queue[str | None]]] = []
        self._host_ports = itertools.count(32768)
        #: Network name -> its summary; containers name theirs in ContainerConfig.network.
        self.networks_by_name: dict[str, NetworkSummary] = {}
        #: Every exec started, in order.
        self.execs: list[FakeExec] = []

    # --- test controls -------------------------------------------------------------------------
    def crash(self, container_id: str, exit_code: int = 1, *, oom: bool = False) -> None:
        """Make a running container exit, as if its process ended."""
        self._exit(container_id, exit_code, oom=oom)

    def running(self) -> list[ContainerInfo]:
        return [c.info for c in self.containers.values() if c.info.running]

    # --- ContainerRuntime ----------------------------------------------------------------------
    async def ping(self) -> None:
        self._check()

    async def ensure_image(
        self, image: str, *, on_progress: ProgressCallback | None = None
    ) -> None:
        self._check()
        if image in self.missing_images:
            raise ContainerError(f"pull {image}: repository does not exist")

    async def run(
        self, config: ContainerConfig, *, on_progress: ProgressCallback | None = None
    ) -> ContainerInfo:
        await self.ensure_image(config.image, on_progress=on_progress)
        if self.start_errors:
            raise self.start_errors.pop(0)
        if config.network not in ("bridge", "host", "none") and (
            config.network not in self.networks_by_name
        ):
            raise NotFound(f"network {config.network} not found")
        if any(c.info.name == config.name for c in self.containers.values()):
            raise ContainerError(f"Conflict. The container name {config.name!r} is already in use")
        taken = {p.host for c in self.containers.values() if c.info.running for p in c.info.ports}
        ports: list[PublishedPort] = []
        for p in config.ports:
            if p.host is None:
                continue
            host = p.host or next(self._host_ports)
            if host in taken:
                raise ContainerError(f"Bind for 0.0.0.0:{host} failed: port is already allocated")
            ports.append(PublishedPort(container=p.container, host=host, protocol=p.protocol))
        info = ContainerInfo(
            id=uuid.uuid4().hex + uuid.uuid4().hex,
            name=config.name,
            image=config.image,
            labels=dict(config.labels),
            status="running",
            running=True,
            exit_code=None,
            started_at=utcnow(),
            ports=ports,
            cpu=config.cpu,
            memory=config.memory,
        )
        self.containers[info.id] = _FakeContainer(
            info, logs=[f"started {config.name}\n".encode()], network=config.network
        )
        return info

    async def stop(self, container_id: str, *, grace: float) -> None:
        self._check()
        if container_id in self.containers and self.containers[container_id].info.running:
            self._exit(container_id, 143)

    async def remove(self, container_id: str) -> None:
        self._check()
        if container_id in self.containers and self.containers[container_id].info.running:
            self._exit(container_id, 137)
        self.containers.pop(container_id, None)

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        self._check()
        found = self.containers.get(container_id)
        return found.info if found else None

    async def list(self, labels: Mapping[str, str]) -> list[ContainerSummary]:
        self._check()
        return [
            ContainerSummary(c.info.id, c.info.name, c.info.labels, c.info.running)
            for c in self.containers.values()
            if _matches(c.info.labels, labels)
        ]

    async def exits(self, labels: Mapping[str, str]) -> AsyncIterator[str]:
        self._check()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        entry = (labels, queue)
        self._exit_queues.append(entry)
        try:
            while (container_id := await queue.get()) is not None:
                yield container_id
        finally:
            self._exit_queues.remove(entry)

    async def logs(
        self,
        container_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        since: float | None = None,
    ) -> AsyncIterator[bytes]:
        self._check()
        found = self.containers.get(container_id)
        if found is None:
            raise NotFound(f"container {container_id} not found")
        started = found.info.started_at
        if since is not None and started is not None and started.timestamp() < since:
            return  # the fake's lines are all written when it starts
        lines = found.logs if tail is None else found.logs[-tail:] if tail else []
        for line in lines:
            yield line

    async def stats(self, container_id: str) -> ContainerStats:
        info = await self.inspect(container_id)
        if info is None:
            raise NotFound(f"container {container_id} not found")
        return ContainerStats(cpu_percent=0.0, memory_usage=0, memory_limit=info.memory)

    async def exec(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> FakeExec:
        info = await self.inspect(container_id)
        if info is None:
            raise NotFound(f"No such container: {container_id}")
        if not info.running:
            raise Conflict(f"container {container_id} is not running")
        self.execs.append(FakeExec(command, stdin=stdin, tty=tty))
        return self.execs[-1]

    async def ensure_network(self, name: str, *, labels: Mapping[str, str]) -> str:
        self._check()
        if name not in self.networks_by_name:
            self.networks_by_name[name] = NetworkSummary(uuid.uuid4().hex, name, dict(labels))
        return self.networks_by_name[name].id

    async def remove_network(self, name: str) -> None:
        self._check()
        if name not in self.networks_by_name:
            return
        # As the engine: a stopped container holds no endpoint (it cannot start again).
        if any(c.network == name and c.info.running for c in self.containers.values()):
            raise ContainerError(f"error while removing network {name}: it has active endpoints")
        del self.networks_by_name[name]

    async def networks(self, labels: Mapping[str, str]) -> builtins.list[NetworkSummary]:
        self._check()
        return [n for n in self.networks_by_name.values() if _matches(n.labels, labels)]

    async def close(self) -> None:
        for _, queue in self._exit_queues:
            queue.put_nowait(None)

    # --- internals -----------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.available:
            raise RuntimeUnavailable("fake engine is down")

    def _exit(self, container_id: str, exit_code: int, *, oom: bool = False) -> None:
        found = self.containers[container_id]
        found.info = replace(
            found.info,
            status="exited",
            running=False,
            exit_code=exit_code,
            oom_killed=oom,
            finished_at=utcnow(),
        )
        for labels, queue in self._exit_queues:
            if _matches(found.info.labels, labels):
                queue.put_nowait(container_id)


def _matches(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())
