"""What a worker finds on its machine: the host ports other processes hold."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cube.worker.metrics import listening_ports

#: /proc/net, read directly; and a path without it, where psutil answers instead.
SOURCES = [Path("/proc/net"), Path("/nonexistent")]


@pytest.fixture
def listener(held_port: socket.socket) -> int:
    return int(held_port.getsockname()[1])


@pytest.mark.parametrize("proc_net", SOURCES, ids=["proc", "psutil"])
def test_a_listening_tcp_port_is_in_use(listener: int, proc_net: Path) -> None:
    assert listener in listening_ports(proc_net)


@pytest.mark.parametrize("proc_net", SOURCES, ids=["proc", "psutil"])
def test_a_bound_udp_port_is_in_use_and_a_closed_one_is_not(proc_net: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = int(s.getsockname()[1])
        assert port in listening_ports(proc_net)
    assert port not in listening_ports(proc_net)


@pytest.mark.parametrize("proc_net", SOURCES, ids=["proc", "psutil"])
def test_a_connected_tcp_client_is_not_listening(listener: int, proc_net: Path) -> None:
    with socket.create_connection(("127.0.0.1", listener)) as client:
        assert client.getsockname()[1] not in listening_ports(proc_net)
