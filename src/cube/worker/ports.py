"""Host ports an allocation's tasks publish, chosen by the worker before the container exists.

A task of a job allocation is told its host ports in its environment (``CUBE_PORT_8080``),
so they must be known before its container is created: Docker's own choice (``HostPort:
""``) is only known after the start. The worker asks the kernel for a free port, binds
exactly that one, and chooses again if something took it in between (the engine then
refuses the start: :func:`port_taken`).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable, Sequence

from cube.errors import ContainerError
from cube.task.model import PublishedPort
from cube.task.spec import PortMapping, Protocol

#: How many times a start is tried with freshly chosen ports before its failure stands.
PORT_ATTEMPTS = 5

#: Binds ``port`` (0: any) for ``protocol`` on every address and gives back the port bound,
#: or None if it is taken. Only checks: the socket is closed again at once.
Probe = Callable[[int, Protocol], int | None]


def probe_port(port: int, protocol: Protocol) -> int | None:
    kind = socket.SOCK_DGRAM if protocol is Protocol.UDP else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # As the engine's listener will: connections of the port's last owner still in
            # TIME_WAIT must not make a free port look taken.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))  # where the engine publishes: every address
        except OSError:
            return None
        return int(s.getsockname()[1])


_TAKEN = re.compile(r":(\d+)(?: failed: port is already allocated|: bind: address already in use)")


def port_taken(error: ContainerError) -> int | None:
    """The host port the engine refused a start for because it is taken, if that is why.

    Docker says ``Bind for 0.0.0.0:N failed: port is already allocated`` when its own
    allocator has the port, and ``listen tcp4 0.0.0.0:N: bind: address already in use``
    when another process holds it.
    """
    found = _TAKEN.search(error.message)
    return int(found.group(1)) if found else None


class HostPorts:
    """Chooses the host ports of allocation tasks on this node.

    Ports chosen but not yet published (between the choice and the container's start)
    are held back, so two starts at once do not choose the same one.
    """

    def __init__(self, *, probe: Probe = probe_port) -> None:
        self._probe = probe
        self._held: set[tuple[int, Protocol]] = set()

    def choose(
        self,
        wanted: Sequence[PortMapping],
        *,
        previous: Iterable[PublishedPort] = (),
        avoid: Iterable[int] = (),
    ) -> list[PortMapping]:
        """``wanted`` with a host port for each: the one given, else the one the task had
        before (a restarted task keeps its address when it can), else a free one.

        ``avoid``: ports a start just failed on. Call :meth:`release` with the result once
        the container is started (or failed to).
        """
        before = {(p.container, p.protocol): p.host for p in previous}
        skip = set(avoid)
        out: list[PortMapping] = []
        for port in wanted:
            host = port.host or self._free(before.get((port.container, port.protocol)), port, skip)
            self._held.add((host, port.protocol))
            out.append(port.model_copy(update={"host": host}))
        return out

    def release(self, ports: Iterable[PortMapping]) -> None:
        for p in ports:
            self._held.discard((p.host or 0, p.protocol))

    def _free(self, preferred: int | None, port: PortMapping, skip: set[int]) -> int:
        if preferred and preferred not in skip and self._usable(preferred, port.protocol):
            return preferred
        for _ in range(100):
            host = self._probe(0, port.protocol)
            if host is not None and host not in skip and (host, port.protocol) not in self._held:
                return host
        raise ContainerError(f"no free host port for container port {port.container}")

    def _usable(self, host: int, protocol: Protocol) -> bool:
        return (host, protocol) not in self._held and self._probe(host, protocol) == host


def port_env(ports: Iterable[PortMapping]) -> dict[str, str]:
    """``CUBE_PORT_<container port>`` = host port, for each published port.

    Ports have no names in a task spec, so the container port names them. A container
    port published for both protocols gets the second one's as ``CUBE_PORT_53_UDP``.
    """
    env: dict[str, str] = {}
    for p in ports:
        key = f"CUBE_PORT_{p.container}"
        if key in env:
            key = f"{key}_{p.protocol.value.upper()}"
        env[key] = str(p.host)
    return env
