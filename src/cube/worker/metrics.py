"""Machine metrics: what a worker measures about the machine it runs on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from cube.node import MachineStats, Resources


class MachineSampler:
    """Samples CPU over the real interval between two calls, plus memory, disk and load.

    ``psutil.cpu_percent(None)`` compares against the previous call, so the first
    sample primes the counter and each later one covers the time since the last.
    """

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)

    def capacity(self) -> Resources:
        """What this machine has to offer: all cores, all memory, the data disk."""
        return Resources(
            cpu=float(psutil.cpu_count() or 1),
            memory=psutil.virtual_memory().total,
            disk=psutil.disk_usage(str(self.disk_path)).total,
        )

    def ports_in_use(self) -> set[int]:
        """Host ports taken on this machine by any process: see :func:`listening_ports`."""
        return listening_ports()

    def sample(self, *, tasks_running: int) -> MachineStats:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self.disk_path))
        load = os.getloadavg()
        return MachineStats(
            cpu_percent=psutil.cpu_percent(interval=None),
            cpu_count=psutil.cpu_count() or 1,
            memory_total=memory.total,
            memory_available=memory.available,
            disk_total=disk.total,
            disk_free=disk.free,
            load_avg=(load[0], load[1], load[2]),
            tasks_running=tasks_running,
        )


#: Socket states in /proc/net/{tcp,udp}*: TCP_LISTEN, and TCP_CLOSE (an unconnected UDP socket).
_LISTEN, _UDP_BOUND = "0A", "07"


def listening_ports(proc_net: Path = Path("/proc/net")) -> set[int]:
    """Ports with a listening TCP socket or a bound, unconnected UDP socket on any address.

    A container that publishes one of them is refused by Docker ("address already in
    use"), so the worker reports them and the scheduler places such a task elsewhere.
    Read from /proc/net (a millisecond); psutil where there is none: its scan of every
    process' open files costs some 15 ms per 100 processes.
    """
    if not (proc_net / "tcp").exists():
        return {
            c.laddr.port
            for c in psutil.net_connections(kind="inet")
            if c.laddr
            and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr))
        }
    ports: set[int] = set()
    for name, state in (
        ("tcp", _LISTEN),
        ("tcp6", _LISTEN),
        ("udp", _UDP_BOUND),
        ("udp6", _UDP_BOUND),
    ):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:  # no IPv6 on this machine
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state and fields[2].endswith(":0000"):
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports
