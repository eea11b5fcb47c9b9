"""The ``inproc`` part of ``bench/jobs.py``: the manager's job service alone, at full size.

A real :class:`cube.manager.core.Manager` with a SQLite store and ``--nodes`` nodes, in
this process; the nodes are a worker client that accepts every task at once and reports
it Running on the next turn of the loop (what a node's blocking query would say), so
nothing but the manager's own work is measured: passes, placements, store writes, the
send path. The job loop runs as in ``cube manager`` (``JobService.start``); ``--jobs``
service jobs of ``--count`` allocations are submitted at once, and the clock stops when
every allocation is Running.

Reported: allocations per second, CPU seconds, peak memory (``VmHWM`` of this process),
passes, and the longest the event loop was held (a 50 ms ticker's worst lateness): a
loop held for seconds is what made simulated workers miss the manager's calls.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager import MiB, peak_rss

from cube.heap import freeze_survivors, write_heap_report
from cube.job.parse import parse_job
from cube.manager.core import Manager
from cube.manager.workers import WorkerClient
from cube.node import Node, Resources
from cube.scheduler import make_scheduler
from cube.store.sqlite import SqliteStore
from cube.task.model import Task
from cube.task.spec import TaskRequest
from cube.task.state import State

TICK = 0.05


class InstantNodes(WorkerClient):
    """Every node takes every task, and reports it Running on the loop's next turn."""

    def __init__(self) -> None:
        super().__init__()
        self.manager: Manager | None = None
        self.sent = 0

    async def run(self, address: str, request: TaskRequest) -> Task:
        self.sent += 1
        task_id = request.id or ""
        asyncio.get_running_loop().call_soon(self._started, task_id)
        return Task(id=task_id, spec=request.spec())

    def _started(self, task_id: str) -> None:
        assert self.manager is not None
        task = self.manager.tasks.get(task_id)
        if task is not None and task.state is State.SCHEDULED:
            self.manager._save(task, task.transition(State.RUNNING, "started"))


@dataclass
class InprocRun:
    nodes: int
    jobs: int
    count: int
    running: int = 0
    running_s: float = float("nan")
    rate: float = float("nan")
    cpu_s: float = float("nan")
    peak_mib: float = float("nan")
    passes: int = 0
    full_passes: int = 0
    loop_held_max_s: float = 0.0
    error: str = ""


async def inproc_part(args: Any) -> InprocRun:
    run = InprocRun(nodes=args.nodes, jobs=args.jobs, count=args.count)
    wanted = args.jobs * args.count
    with tempfile.TemporaryDirectory(prefix="cube-bench-inproc-") as work:
        store = SqliteStore(Path(work) / "cube.db")
        capacity = Resources(cpu=4, memory=8 * 1024 * MiB, disk=100 * 1024 * MiB)
        for i in range(args.nodes):
            name = f"sim-{i:05d}"
            store.save_node(Node(name=name, address=f"http://{name}", capacity=capacity))
        nodes = InstantNodes()
        manager = Manager(store=store, scheduler=make_scheduler(args.scheduler), workers=nodes)
        nodes.manager = manager
        freeze_survivors()  # as the agents do (cube.cli.agents): no long GC pauses
        if args.heap_reports is not None:
            if args.tracemalloc:
                tracemalloc.start(args.tracemalloc)
            write_heap_report(args.heap_reports)
        held = 0.0

        async def ticker() -> None:
            nonlocal held
            while True:
                before = time.perf_counter()
                await asyncio.sleep(TICK)
                held = max(held, time.perf_counter() - before - TICK)

        tick = asyncio.create_task(ticker())
        cpu0, t0 = time.process_time(), time.monotonic()
        for j in range(args.jobs):
            task = {"name": "app", "image": "busybox", "resources": {"cpu": 0.1, "memory": "32MiB"}}
            spec = {
                "job": f"sim-{j:04d}",
                "groups": [{"name": "g", "count": args.count, "tasks": [task]}],
            }
            await manager.jobs.submit(parse_job(spec))
        manager.jobs.start()
        deadline = t0 + args.timeout
        allocs = manager.jobs.allocs
        shown = t0
        while True:
            await asyncio.sleep(0.5)
            run.running = sum(1 for a in allocs.values() if a.status.value == "running")
            if run.running >= wanted:
                break
            if time.monotonic() - shown >= 10:
                shown = time.monotonic()
                print(
                    f"  [{shown - t0:6.0f}s] {run.running:,} of {wanted:,} Running", file=sys.stderr
                )
            if time.monotonic() > deadline:
                run.error = f"{run.running} of {wanted} Running after {args.timeout:g}s"
                break
        run.running_s = time.monotonic() - t0
        run.cpu_s = time.process_time() - cpu0
        run.rate = run.running / run.running_s
        # getattr: the same script measures older versions too (before full passes)
        run.passes = manager.jobs.passes
        run.full_passes = getattr(manager.jobs, "full_passes", 0)
        run.loop_held_max_s = held
        run.peak_mib = peak_rss(os.getpid()) / MiB
        if args.heap_reports is not None:
            write_heap_report(args.heap_reports)
        tick.cancel()
        await manager.close()
        store.close()
    return run
