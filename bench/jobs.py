"""Jobs: a service job's allocations against Docker and Swarm, and at scale on simulated nodes.

Three parts (``--parts``):

* ``docker``: on the real engine, in the same run, a service job with one group of one
  task and ``count: N`` submitted with one ``POST /v1/jobs`` to a fresh ``cube dev``
  (``cube-job``), against ``docker service create --replicas N`` (``swarm``) and N
  direct Engine API starts, all at once (``docker-api-parallel``); the containers are
  those of ``bench/start.py`` (busybox ``sleep 600``, 0.5 CPU, 8 MiB). Cube's clock stops
  when Docker's event stream has shown all N containers start (as for the others: Docker
  sees them Running); when the manager lists all N allocations Running is recorded too.
  Each allocation gets a Docker network of its own (the task joins it), so N is bounded
  by the engine's address pools (about 30 bridge networks by default): a size that
  fails is reported as an error, not hidden.
* ``sim``: a real ``cube manager`` and a real ``cube sim-fleet`` (``bench/manager.py``):
  ``--jobs`` service jobs of ``--count`` allocations each, submitted at once, timed until
  the manager reports every allocation Running (its job status counts them; the end is
  confirmed with the full allocation list). Reported: allocations per second end to end,
  the manager's peak memory (``VmHWM``) and CPU. Anchor (from the issue): Nomad's C1M
  reached 3,750 containers/s with 5 servers.

* ``inproc``: the manager's job service alone, in this process, with nodes that take
  every task at once (``bench/jobs_inproc.py``): what the manager itself can do, at the
  issue's full size, without HTTP or a fleet sharing its CPU.

* ``rolling``: a rolling update of a ``--rolling-size`` HTTP service (start-first,
  ``max_parallel: 5``, ``min_healthy_time: 1s``) against ``docker service update
  --update-parallelism 5 --update-order start-first``: time to all-new, the fewest
  answering during it, and where Cube's time went per batch (``bench/rolling.py``);
  ``--trials`` times.

The Docker and rolling parts hold the engine for minutes and initialises a swarm (left at the end):
run it alone on the engine, e.g. ``flock -x /tmp/cube-engine.lock python bench/jobs.py``.

    python bench/jobs.py --parts docker --sizes 20,100 --trials 3
    python bench/jobs.py --parts sim --nodes 5000 --jobs 100 --count 1000
    python bench/jobs.py --parts sim --nodes 50 --jobs 4 --count 50      # a small run
    python bench/jobs.py --parts inproc --nodes 5000 --jobs 100 --count 1000
    python bench/jobs.py --parts rolling --rolling-sizes 20 --trials 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import ints, machine, names_of, save_json, table
from _docker import WORKDIR, CpuMeter, Engine, run_id, task_body
from jobs_inproc import inproc_part
from manager import MiB, peak_rss, sim_cluster, wait_for
from rolling import ROLLING_SYSTEMS, rolling_part
from start import COLUMNS, POLL, Bench, Run, run_trials, summarise, worker_selector

from cube.heap import REPORT_ENV

PARTS = ("docker", "sim", "inproc", "rolling")
SYSTEMS = ("cube-job", "docker-api-parallel", "swarm")
#: The issue's targets for the Docker part, at the largest size.
TARGET_RATIO = 1.15
#: Nomad's C1M: containers per second with 5 servers (the issue's anchor).
NOMAD_C1M_RATE = 3750.0
#: The job status the manager gives a service job with allocations running.
RUNNING_REASON = re.compile(r"^(\d+) allocations running")


def job_body(name: str, count: int, *, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """A service job of one group ``g`` of one task ``app`` (a benchmark task), ``count`` times."""
    task = {**task_body("app"), **({"resources": resources} if resources else {})}
    return {
        "job": name,
        "type": "service",
        "groups": [{"name": "g", "count": count, "tasks": [task]}],
    }


# --- part 1: real Docker --------------------------------------------------------------------------
class JobBench(Bench):
    """``bench/start.py``'s systems, and a Cube job of N allocations."""

    timeout: float = 300.0

    def actions(self) -> dict[str, Callable[[Run], Awaitable[None]]]:
        return {**super().actions(), "cube-job": self.cube_job}

    async def cube_job(self, run: Run) -> None:
        async with self.dev_node() as (agent, client, name):
            selector = worker_selector(name)
            started: asyncio.Queue[str] = asyncio.Queue()
            job = f"{name}-job"
            async with self.engine.starts(selector, started):
                assert agent.proc is not None
                meter = CpuMeter(agent.proc.pid)
                t0, wall0 = time.monotonic(), time.time()
                response = await client.post("/v1/jobs", json=job_body(job, run.size))
                response.raise_for_status()
                run.submitted = time.monotonic() - t0
                seen: set[str] = set()
                deadline = t0 + self.timeout
                while len(seen) < run.size:
                    try:
                        task = await asyncio.wait_for(started.get(), deadline - time.monotonic())
                    except TimeoutError:
                        raise TimeoutError(
                            f"{len(seen)} of {run.size} containers started in {self.timeout:g}s"
                        ) from None
                    if task not in seen:
                        seen.add(task)
                        run.curve.append((time.monotonic() - t0, len(seen)))
                run.seconds = time.monotonic() - t0
                run.cube_cpu, run.engine_cpu, run.client_cpu = meter.read()

            async def all_running() -> bool:
                return await _allocs_running(client, job) >= run.size

            await _until(all_running, f"{run.size} allocations Running", deadline)
            run.manager_running = time.monotonic() - t0
            run.docker_running = await self.last_started(selector) - wall0


async def _allocs_running(client: httpx.AsyncClient, job: str) -> int:
    allocs = (await client.get("/v1/allocations", params={"job": job})).raise_for_status().json()
    return sum(1 for a in allocs if a["status"] == "running")


async def _until(check: Callable[[], Awaitable[bool]], what: str, deadline: float) -> None:
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)


async def docker_part(args: argparse.Namespace) -> dict[str, Any]:
    rid = run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"cube-jobs-{rid}-", dir=WORKDIR))
    bench = JobBench(Engine(), rid, workdir)
    bench.timeout = args.timeout
    print(f"run {rid}: logs in {workdir}", file=sys.stderr)
    # One attempt each: a size the engine cannot serve (address pools) fails the same way again.
    runs = await run_trials(bench, args.systems, args.sizes, args.trials, attempts=1)
    rows = summarise(runs, SYSTEMS)
    for row in rows:
        if row["system"] == "cube-job":
            mine = [r for r in runs if r.system == "cube-job" and r.size == row["size"]]
            ok = [r.manager_running for r in mine if not r.error]
            row["manager_running_s"] = sorted(ok)[len(ok) // 2] if ok else None
            row["submitted_s"] = sorted(r.submitted for r in mine)[len(mine) // 2]
    return {
        "summary": rows,
        "verdicts": docker_verdicts(rows),
        "runs": [{**r.row(), "curve": r.curve} for r in runs],
        "workdir": str(workdir),
    }


def docker_verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for size in sorted({r["size"] for r in rows}):
        by = {r["system"]: r for r in rows if r["size"] == size}
        cube = by.get("cube-job")
        if cube is None:
            out.append(f"{size}: cube-job did not finish (see the runs' errors)")
            continue
        ratio = cube["vs_docker_api_parallel"]
        out.append(
            f"{size}: cube-job {cube['median_s']:.2f}s = {ratio:.2f}x direct Docker "
            f"(target {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'})"
        )
        if (swarm := by.get("swarm")) is not None:
            faster = cube["median_s"] < swarm["median_s"]
            out.append(
                f"{size}: cube-job vs swarm {cube['median_s']:.2f}s vs {swarm['median_s']:.2f}s "
                f"(faster than Swarm: {'met' if faster else 'MISSED'})"
            )
    return out


# --- part 2: simulated nodes ----------------------------------------------------------------------
@dataclass
class SimRun:
    nodes: int
    jobs: int
    count: int
    join_s: float = float("nan")
    submit_s: float = float("nan")
    #: Seconds from the first submit until the manager reported every allocation Running.
    running_s: float = float("nan")
    running: int = 0
    rate: float = float("nan")
    manager_peak_rss: int = 0
    manager_cpu_s: float = float("nan")
    #: Median and peak manager CPU over the 1 s samples taken while allocations started.
    manager_cpu_pct_median: float = float("nan")
    manager_cpu_pct_max: float = float("nan")
    fleet_cpu_s: float = float("nan")
    #: Processes the simulated fleet ran in (cube sim-fleet --processes).
    fleet_processes: int = 1
    #: From the logs, over the whole run (join included): workers that stopped their
    #: tasks for the manager's silence, nodes the manager marked Down, joins retried.
    no_call_stops: int = 0
    nodes_down: int = 0
    joins_retried: int = 0
    error: str = ""
    #: (seconds since submit, allocations Running, manager CPU %, manager RSS, fleet CPU %).
    samples: list[tuple[float, int, float, int, float]] = field(default_factory=list)


async def running_allocations(http: httpx.AsyncClient) -> int:
    """Allocations the manager reports Running, from its job statuses (a cheap list)."""
    jobs = (await http.get("/v1/jobs", timeout=120.0)).raise_for_status().json()
    return sum(int(m.group(1)) for j in jobs if (m := RUNNING_REASON.match(j["status_reason"])))


async def sim_part(args: argparse.Namespace, work: Path) -> SimRun:
    run = SimRun(
        nodes=args.nodes, jobs=args.jobs, count=args.count, fleet_processes=args.fleet_processes
    )
    wanted = args.jobs * args.count
    async with sim_cluster(
        work,
        workers=args.nodes,
        collect_interval=1.0,
        scheduler=args.scheduler,
        processes=args.fleet_processes,
        manager_env=heap_env(args),
    ) as cluster:
        manager, fleet = psutil.Process(cluster.manager.pid), psutil.Process(cluster.fleet.pid)
        t_join = time.monotonic()
        async with httpx.AsyncClient(
            base_url=cluster.url, headers=cluster.headers, timeout=120.0
        ) as http:

            async def joined() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    nodes = (await http.get("/v1/nodes")).json()
                    return sum(1 for n in nodes if n["state"] == "ready") >= args.nodes
                return False

            await wait_for(f"{args.nodes} nodes", joined, args.timeout)
            run.join_s = time.monotonic() - t_join
            print(f"{args.nodes} nodes joined in {run.join_s:.1f}s", file=sys.stderr)
            await heap_report(args, manager.pid)
            cpu0 = _cpu(manager), _cpu(fleet)
            manager.cpu_percent(None)
            t0 = time.monotonic()
            fleet_was = t0, cpu0[1]
            resources = {"cpu": 0.1, "memory": 32 * MiB, "disk": 0}
            bodies = [
                job_body(f"sim-{i:04d}", args.count, resources=resources) for i in range(args.jobs)
            ]
            gate = asyncio.Semaphore(8)

            async def submit(body: dict[str, Any]) -> None:
                async with gate:
                    (await http.post("/v1/jobs", json=body)).raise_for_status()

            await asyncio.gather(*(submit(b) for b in bodies))
            run.submit_s = time.monotonic() - t0
            print(f"{args.jobs} jobs submitted in {run.submit_s:.1f}s", file=sys.stderr)
            deadline = t0 + args.timeout
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    run.running = await running_allocations(http)
                now = time.monotonic() - t0
                # The fleet's processes together (percent of one core).
                fleet_is = time.monotonic(), _cpu(fleet)
                fleet_pct = (
                    100 * (fleet_is[1] - fleet_was[1]) / max(1e-9, fleet_is[0] - fleet_was[0])
                )
                fleet_was = fleet_is
                with contextlib.suppress(psutil.Error):
                    run.samples.append(
                        (
                            now,
                            run.running,
                            manager.cpu_percent(None),
                            manager.memory_info().rss,
                            fleet_pct,
                        )
                    )
                print(
                    f"  [{now:6.0f}s] {run.running:,} of {wanted:,} Running; load "
                    f"{os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                )
                if run.running >= wanted:
                    break
                if time.monotonic() > deadline:
                    run.error = f"{run.running} of {wanted} Running after {args.timeout:g}s"
                    break
                await asyncio.sleep(args.every)
            run.running_s = time.monotonic() - t0
            run.rate = run.running / run.running_s
            run.manager_peak_rss = peak_rss(manager.pid)
            run.manager_cpu_s = _cpu(manager) - cpu0[0]
            run.fleet_cpu_s = _cpu(fleet) - cpu0[1]
            cpus = sorted(s[2] for s in run.samples[1:]) or [float("nan")]
            run.manager_cpu_pct_median, run.manager_cpu_pct_max = cpus[len(cpus) // 2], cpus[-1]
            if not run.error:  # confirm with the allocations themselves
                allocs = (await http.get("/v1/allocations", timeout=300.0)).json()
                listed = sum(1 for a in allocs if a["status"] == "running")
                if listed != wanted:
                    run.error = f"job statuses said {wanted} Running, the allocations {listed}"
            await heap_report(args, manager.pid)
        # Read before the teardown, which stops the fleet first (its nodes then go Down).
        fleet_log = _read(work / "fleet.log")
        run.no_call_stops = fleet_log.count("stopped: no call from the manager")
        run.joins_retried = fleet_log.count("join failed, retrying")
        run.nodes_down = _read(work / "manager.log").count("node down")
    return run


def heap_env(args: argparse.Namespace) -> dict[str, str]:
    """The manager's environment for ``--heap-reports`` (see :mod:`cube.heap`)."""
    if args.heap_reports is None:
        return {}
    env = {REPORT_ENV: str(args.heap_reports)}
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)
    return env


async def heap_report(args: argparse.Namespace, pid: int) -> None:
    """With ``--heap-reports``: have the manager write a heap report, and wait for it."""
    if args.heap_reports is None:
        return
    before = len(list(args.heap_reports.glob("heap-*.json")))
    os.kill(pid, signal.SIGUSR2)

    async def written() -> bool:
        return len(list(args.heap_reports.glob("heap-*.json"))) > before

    await wait_for("the manager's heap report", written, 600, every=0.5)


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")
    return ""


def _cpu(process: psutil.Process) -> float:
    """CPU seconds of ``process`` and its children (a fleet's slices run in children)."""
    total = 0.0
    for proc in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


SIM_COLUMNS = [
    ("nodes", "nodes"),
    ("jobs", "jobs"),
    ("count", "count"),
    ("running", "Running"),
    ("submit_s", "all submitted s"),
    ("running_s", "all Running s"),
    ("rate", "allocations/s"),
    ("manager_cpu_s", "manager CPU s"),
    ("manager_cpu_pct_median", "manager CPU % (median)"),
    ("peak_mib", "manager peak MiB"),
    ("fleet_cpu_s", "fleet CPU s"),
    ("no_call_stops", '"no call" stops'),
    ("nodes_down", "nodes marked Down"),
    ("joins_retried", "joins retried"),
    ("error", "error"),
]


INPROC_COLUMNS = [
    ("nodes", "nodes"),
    ("jobs", "jobs"),
    ("count", "count"),
    ("running", "Running"),
    ("running_s", "all Running s"),
    ("rate", "allocations/s"),
    ("cpu_s", "CPU s"),
    ("peak_mib", "peak MiB"),
    ("passes", "passes"),
    ("full_passes", "full passes"),
    ("loop_held_max_s", "loop held max s"),
    ("error", "error"),
]


ROLLING_COLUMNS = [
    ("system", "system"),
    ("size", "size"),
    ("trial", "trial"),
    ("seconds", "to all-new s"),
    ("fewest_answering", "fewest answering"),
    ("polls", "polls"),
    ("all_new", "all new"),
    ("error", "error"),
]

BATCH_COLUMNS = [
    ("at", "placed at s"),
    ("size", "allocations"),
    ("healthy_to_placed", "after a healthy one s"),
    ("place_to_accepted", "placed -> accepted by the worker"),
    ("accepted_to_started", "-> started in Docker"),
    ("started_to_healthy", "-> healthy on the worker"),
    ("healthy_to_seen", "-> ready in the manager's pass"),
]


# --- main -----------------------------------------------------------------------------------------
async def amain(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "docker" in args.parts:
        out["docker"] = await docker_part(args)
        print(table(out["docker"]["summary"], [*COLUMNS, ("manager_running_s", "manager s")]))
        print("\n".join(out["docker"]["verdicts"]))
    if "rolling" in args.parts:
        rid = run_id()
        workdir = Path(tempfile.mkdtemp(prefix=f"cube-rolling-{rid}-", dir=WORKDIR))
        print(f"rolling run {rid}: logs in {workdir} (kept with --keep)", file=sys.stderr)
        bench = JobBench(Engine(), rid, workdir)
        try:
            out["rolling"] = await rolling_part(
                bench,
                args.rolling_sizes,
                args.timeout,
                args.rolling_systems,
                trials=args.trials,
            )
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        print(table(out["rolling"]["runs"], ROLLING_COLUMNS))
        for run in out["rolling"]["runs"]:
            if run["batches"]:
                print(f"cube, trial {run['trial']}: where the time went, per batch")
                print(table(run["batches"], BATCH_COLUMNS))
        print("\n".join(out["rolling"]["verdicts"]))
    if "sim" in args.parts:
        work = Path(tempfile.mkdtemp(prefix="cube-bench-jobs-", dir=WORKDIR))
        try:
            sim = await sim_part(args, work)
        finally:
            if args.keep:
                print(f"work dir kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
        row = {**asdict(sim), "peak_mib": sim.manager_peak_rss / MiB}
        out["sim"] = row
        print(table([row], SIM_COLUMNS))
        print(f"anchor: Nomad C1M {NOMAD_C1M_RATE:,.0f} containers/s with 5 servers")
    if "inproc" in args.parts:
        inproc = asdict(await inproc_part(args))
        out["inproc"] = inproc
        print(table([inproc], INPROC_COLUMNS))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", type=names_of(PARTS), default=["docker", "sim"], help=",".join(PARTS)
    )
    docker = parser.add_argument_group("docker part")
    docker.add_argument("--sizes", type=ints, default=[100], help="allocations per job")
    parser.add_argument("--trials", type=int, default=3, help="docker and rolling parts")
    docker.add_argument(
        "--systems", type=names_of(SYSTEMS), default=list(SYSTEMS), help=",".join(SYSTEMS)
    )
    rolling = parser.add_argument_group("rolling part")
    rolling.add_argument("--rolling-sizes", type=ints, default=[20], help="allocations")
    rolling.add_argument(
        "--rolling-systems",
        type=names_of(ROLLING_SYSTEMS),
        default=list(ROLLING_SYSTEMS),
        help=",".join(ROLLING_SYSTEMS),
    )
    sim = parser.add_argument_group("sim part")
    sim.add_argument("--nodes", type=int, default=5000, help="simulated workers")
    sim.add_argument("--jobs", type=int, default=100)
    sim.add_argument("--count", type=int, default=1000, help="allocations per job")
    sim.add_argument("--scheduler", default="epvm")
    sim.add_argument(
        "--fleet-processes", type=int, default=1, help="processes of cube sim-fleet (--processes)"
    )
    sim.add_argument("--every", type=float, default=2.0, help="seconds between progress polls")
    sim.add_argument(
        "--keep", action="store_true", help="keep the work dir (logs, db); rolling part too"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="for each wait, seconds")
    parser.add_argument("--json", type=Path, help="save the results here")
    parser.add_argument(
        "--heap-reports",
        type=Path,
        help="sim and inproc: the manager writes a heap report here once joined and once "
        "all Running (cube.heap; bench/heap_report.py reads them)",
    )
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="with --heap-reports: frames traced (0: off)"
    )
    args = parser.parse_args(argv)
    info = machine()
    print(
        f"# {info['date']}  {info['nproc']} x {info['cpu_model']}, {info['memory_gib']} GiB, "
        f"load {info['load_avg_at_start']}",
        file=sys.stderr,
    )
    result = asyncio.run(amain(args))
    if args.json:
        save_json(args.json, {"machine": info, "args": vars(args), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
