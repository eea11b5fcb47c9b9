"""Machine metrics: what a worker measures about the machine it runs on."""

from __future__ import annotations

import os
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
