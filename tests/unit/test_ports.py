"""The host ports a worker chooses for allocation tasks: pure logic with a scripted probe.

(The race with a real engine is in tests/e2e/test_worker_allocs.py.)
"""

from __future__ import annotations

import pytest

from cube.errors import ContainerError
from cube.task.model import PublishedPort
from cube.task.spec import PortMapping, Protocol
from cube.worker.ports import HostPorts, port_env, port_taken


class Machine:
    """A probe over a set of taken ports that hands out 40000, 40001, ... for port 0."""

    def __init__(self, *taken: int) -> None:
        self.taken = set(taken)
        self.next = 40000

    def __call__(self, port: int, protocol: Protocol) -> int | None:
        if port == 0:
            port, self.next = self.next, self.next + 1
        return None if port in self.taken else port


def ports(*specs: str) -> list[PortMapping]:
    return [PortMapping.model_validate(s) for s in specs]


def test_pinned_ports_are_kept_and_the_others_get_free_ones() -> None:
    chosen = HostPorts(probe=Machine(40000)).choose(ports("9000:80", "8080", "53/udp"))
    assert [(p.container, p.host, p.protocol) for p in chosen] == [
        (80, 9000, Protocol.TCP),
        (8080, 40001, Protocol.TCP),
        (53, 40002, Protocol.UDP),
    ]


def test_a_task_gets_its_previous_port_back_unless_it_is_taken_or_just_failed() -> None:
    machine = Machine()

    def host(chooser: HostPorts, avoid: tuple[int, ...] = ()) -> int | None:
        previous = [PublishedPort(container=8080, host=45000)]
        return chooser.choose(ports("8080"), previous=previous, avoid=avoid)[0].host

    shared = HostPorts(probe=machine)
    assert host(shared) == 45000
    assert host(shared) == 40000  # 45000 is held by the first choice
    assert host(HostPorts(probe=machine), avoid=(45000,)) == 40001
    machine.taken.add(45000)
    assert host(HostPorts(probe=machine)) == 40002


def test_a_chosen_port_is_held_until_released() -> None:
    class Repeating(Machine):
        """Offers the same free port until it is bound: the kernel may do just that."""

        def __call__(self, port: int, protocol: Protocol) -> int | None:
            return None if port in self.taken else (port or self.next)

    host_ports = HostPorts(probe=Repeating())
    first = host_ports.choose(ports("8080"))
    with pytest.raises(ContainerError, match="no free host port for container port 8080"):
        host_ports.choose(ports("8080"))
    host_ports.release(first)
    assert host_ports.choose(ports("8080")) == first


def test_port_variables_are_named_by_container_port() -> None:
    published = [
        PortMapping(container=8080, host=41000),
        PortMapping(container=53, host=41001, protocol=Protocol.UDP),
        PortMapping(container=53, host=41002),
    ]
    assert port_env(published) == {
        "CUBE_PORT_8080": "41000",
        "CUBE_PORT_53": "41001",
        "CUBE_PORT_53_TCP": "41002",
    }


@pytest.mark.parametrize(
    ("message", "port"),
    [
        (
            "driver failed programming external connectivity on endpoint x (abc): Error starting "
            "userland proxy: listen tcp4 0.0.0.0:56449: bind: address already in use",
            56449,
        ),
        (
            "driver failed programming external connectivity on endpoint x (abc): "
            "Bind for 0.0.0.0:8080 failed: port is already allocated",
            8080,
        ),
        ("No such image: nope:latest", None),
    ],
)
def test_the_engines_refusals_name_the_taken_port(message: str, port: int | None) -> None:
    assert port_taken(ContainerError(message)) == port
