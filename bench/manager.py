"""The manager at scale: 1,000 simulated workers, 10,000 tasks, real processes and HTTP.

Starts a real ``cube manager`` (SQLite store in a temporary directory) and a real
``cube sim-fleet`` whose workers register with it, then

1. submits the tasks concurrently and times every ``POST /v1/tasks``;
2. waits until every task runs;
3. for ``--duration`` seconds of steady state, times ``GET /v1/tasks`` (the full
   list, spread evenly over the period) and a trickle of further ``POST /v1/tasks``;

and all along samples, once a second, how stale the manager's node data is
(now - ``last_seen`` of every node in ``GET /v1/nodes``), and the manager's CPU
and memory (psutil; the peak is the kernel's high-water mark, ``VmHWM``).

Targets (from the issue): node data never older than twice the collection
interval, p99 latency under 100 ms for both calls, peak memory under 1 GiB.

    python bench/manager.py                                  # 1,000 workers, 10,000 tasks
    python bench/manager.py --workers 100 --tasks 1000 --duration 20 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from _common import agent_env, machine, output_arguments, percentile, save_figure, save_json, table
from _docker import free_port

MiB = 1024**2
GiB = 1024**3
TARGET_LATENCY_MS = 100.0
TARGET_MEMORY = GiB
TARGET_STALENESS_FACTOR = 2.0


# --- processes ------------------------------------------------------------------------------------
def cube() -> str:
    found = shutil.which("cube", path=str(Path(sys.executable).parent)) or shutil.which("cube")
    if found is None:
        raise SystemExit("the cube command is not installed next to this Python")
    return found


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (``VmHWM``), in bytes; 0 if unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- measurements ---------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # seconds since the start of the run
    phase: str
    stale_max: float | None = None
    stale_p99: float | None = None
    stale_p50: float | None = None
    nodes: int = 0
    nodes_ms: float | None = None
    manager_cpu: float = 0.0  # percent of one core over the last interval
    manager_rss: int = 0
    fleet_cpu: float = 0.0


@dataclass
class Run:
    t0: float = field(default_factory=time.monotonic)
    phase: str = "join"
    samples: list[Sample] = field(default_factory=list)
    posts: list[tuple[float, str, float, int]] = field(default_factory=list)  # t, phase, ms, code
    gets: list[tuple[float, float, int, int]] = field(default_factory=list)  # t, ms, code, bytes
    phases: dict[str, float] = field(default_factory=dict)  # phase -> start time
    errors: list[str] = field(default_factory=list)
    #: What the manager's /v1/health says once every node joined: the intervals in force.
    pace: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phases[phase] = self.now()
        print(f"[{self.now():7.1f}s] {phase}", file=sys.stderr)


async def sample_loop(
    run: Run,
    http: httpx.AsyncClient,
    manager: psutil.Process,
    fleet: psutil.Process,
    every: float,
) -> None:
    """Once per ``every`` seconds: node staleness, manager CPU and memory."""
    manager.cpu_percent(None)
    fleet.cpu_percent(None)
    while True:
        started = time.monotonic()
        sample = Sample(t=run.now(), phase=run.phase)
        try:
            response = await http.get("/v1/nodes", timeout=30.0)
            received = time.time()
            sample.nodes_ms = (time.monotonic() - started) * 1000
            nodes = response.json() if response.is_success else []
        except httpx.HTTPError:
            nodes = []
        ages = [
            received - _timestamp(n["last_seen"]) for n in nodes if n.get("last_seen") is not None
        ]
        if ages:
            sample.stale_max = max(ages)
            sample.stale_p99 = percentile(ages, 99)
            sample.stale_p50 = percentile(ages, 50)
        sample.nodes = len(nodes)
        with contextlib.suppress(psutil.Error):
            sample.manager_cpu = manager.cpu_percent(None)
            sample.manager_rss = manager.memory_info().rss
            sample.fleet_cpu = fleet.cpu_percent(None)
        run.samples.append(sample)
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


def _timestamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def task_body(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "id": f"bench-{i}",  # idempotent: a POST whose answer was lost can be sent again
        "name": f"bench-{i}",
        "image": "busybox:latest",
        "command": ["sleep", "3600"],
        "resources": {
            "cpu": rng.choice((0.1, 0.2, 0.25)),
            "memory": rng.choice((64, 128, 256)) * MiB,
        },
    }


async def post(run: Run, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    started = time.monotonic()
    code = 0
    for attempt in (1, 2):
        try:
            response = await http.post("/v1/tasks", json=body, timeout=120.0)
            code = response.status_code
            break
        except httpx.TransportError as exc:
            # E.g. the server closed a kept-alive connection just as it was reused (uvicorn
            # closes idle ones after 5 s). The body carries the task's ID, so sending it
            # again cannot run the task twice. Recorded, and a failure if the retry fails.
            run.errors.append(f"POST attempt {attempt}: {type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            run.errors.append(f"POST: {type(exc).__name__}: {exc}")
            break
    run.posts.append((run.now(), run.phase, (time.monotonic() - started) * 1000, code))


async def submit_all(
    run: Run, http: httpx.AsyncClient, count: int, concurrency: int, rng: random.Random
) -> None:
    bodies = iter([task_body(i, rng) for i in range(count)])

    async def client() -> None:
        for body in bodies:
            await post(run, http, body)

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def running_count(http: httpx.AsyncClient) -> int:
    response = await http.get("/v1/tasks", params={"state": "running"}, timeout=120.0)
    return len(response.json()) if response.is_success else 0


async def get_tasks_loop(run: Run, http: httpx.AsyncClient, count: int, period: float) -> None:
    """``count`` full ``GET /v1/tasks``, one every ``period / count`` seconds (or back to back
    when one takes longer)."""
    gap = period / count
    for _ in range(count):
        started = time.monotonic()
        try:
            response = await http.get("/v1/tasks", timeout=120.0)
            body = await response.aread()
            code, size = response.status_code, len(body)
        except httpx.HTTPError:
            code, size = 0, 0
        run.gets.append((run.now(), (time.monotonic() - started) * 1000, code, size))
        await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))


async def trickle_posts(
    run: Run, http: httpx.AsyncClient, count: int, period: float, first: int, rng: random.Random
) -> None:
    gap = period / max(1, count)
    for i in range(count):
        started = time.monotonic()
        await post(run, http, task_body(first + i, rng))
        await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], limit: float, every: float = 2.0
) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(every)


# --- the run --------------------------------------------------------------------------------------
@dataclass
class SimCluster:
    """A real ``cube manager`` and a real ``cube sim-fleet`` registering with it."""

    manager: subprocess.Popen[bytes]
    fleet: subprocess.Popen[bytes]
    url: str
    #: ``Authorization`` for the manager's API.
    headers: dict[str, str]


@contextlib.asynccontextmanager
async def sim_cluster(
    work: Path,
    *,
    workers: int,
    collect_interval: float,
    scheduler: str,
    processes: int = 1,
    manager_env: dict[str, str] | None = None,
) -> AsyncIterator[SimCluster]:
    """Start the manager (SQLite store in ``work``), wait until it answers, then start a
    fleet of ``workers`` simulated workers (4 CPU, 8 GiB each) that join it, in
    ``processes`` processes; both are stopped afterwards. The workers may still be joining
    when the block begins. ``manager_env``: more environment for the manager alone."""
    env = agent_env(CUBE_DATA_DIR=str(work))
    manager_port, fleet_port = free_port(), free_port(processes)
    url = f"http://127.0.0.1:{manager_port}"
    manager_args = [
        cube(),
        "manager",
        *("--port", str(manager_port), "--data-dir", str(work / "manager")),
        *("--store", "sqlite", "--collect-interval", str(collect_interval)),
        *("--scheduler", scheduler, "--log-level", "warning"),
    ]
    manager = start(manager_args, work / "manager.log", {**env, **(manager_env or {})})
    fleet: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as probe:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await probe.get("/v1/health")).is_success
                return False

            await wait_for("the manager", healthy, 60, every=0.2)
        token = (work / "manager" / "token").read_text().strip()
        join_token = (work / "manager" / "join-token").read_text().strip()
        fleet_args = [
            cube(),
            "sim-fleet",
            *("--count", str(workers), "--port", str(fleet_port)),
            *("--manager", url, "--join-token", join_token),
            *("--cpu", "4", "--memory", "8GiB", "--processes", str(processes)),
        ]
        fleet = start(fleet_args, work / "fleet.log", env)
        yield SimCluster(manager, fleet, url, {"Authorization": f"Bearer {token}"})
    finally:
        if fleet is not None:
            stop(fleet)
        stop(manager)


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    run = Run()
    async with sim_cluster(
        work,
        workers=args.workers,
        collect_interval=args.collect_interval,
        scheduler=args.scheduler,
    ) as cluster:
        manager, fleet, url, headers = cluster.manager, cluster.fleet, cluster.url, cluster.headers
        limits = httpx.Limits(max_connections=args.concurrency + 8)
        async with (
            httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http,
            httpx.AsyncClient(base_url=url, headers=headers) as watcher,
        ):
            sampler = asyncio.create_task(
                sample_loop(
                    run, watcher, psutil.Process(manager.pid), psutil.Process(fleet.pid), 1.0
                )
            )
            run.enter("join")

            async def joined() -> bool:
                return bool(run.samples) and run.samples[-1].nodes >= args.workers

            await wait_for(f"{args.workers} nodes", joined, args.timeout)
            await asyncio.sleep(args.settle)
            # The manager stretches its intervals for a large fleet (cube.manager.pacing):
            # node data is judged against the interval in force, which it reports.
            run.pace = (await http.get("/v1/health")).raise_for_status().json()
            run.enter("submit")
            rng = random.Random(args.seed)
            await submit_all(run, http, args.tasks, args.concurrency, rng)
            run.enter("start")

            accepted = sum(1 for *_, code in run.posts if 200 <= code < 300)

            async def all_running() -> bool:
                return await running_count(http) >= accepted

            await wait_for(f"{accepted} running tasks", all_running, args.timeout, every=5.0)
            run.enter("steady")
            await asyncio.gather(
                get_tasks_loop(run, http, args.gets, args.duration),
                trickle_posts(run, http, args.steady_posts, args.duration, args.tasks, rng),
            )
            run.enter("done")
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        peak = peak_rss(manager.pid)
        manager_cpu = psutil.Process(manager.pid).cpu_times()
        fleet_cpu = psutil.Process(fleet.pid).cpu_times()
    return summarise(
        run,
        args,
        peak=peak,
        manager_cpu_s=manager_cpu.user + manager_cpu.system,
        fleet_cpu_s=fleet_cpu.user + fleet_cpu.system,
    )


def summarise(
    run: Run, args: argparse.Namespace, *, peak: int, manager_cpu_s: float, fleet_cpu_s: float
) -> dict[str, Any]:
    def stale(phases: Sequence[str]) -> dict[str, float | None]:
        s = [x for x in run.samples if x.phase in phases and x.stale_max is not None]
        worst = [x.stale_max for x in s if x.stale_max is not None]
        p99s = [x.stale_p99 for x in s if x.stale_p99 is not None]
        return {
            "max": max(worst) if worst else None,
            "p99_of_samples_max": percentile(worst, 99) if worst else None,
            "median_p99": percentile(p99s, 50) if p99s else None,
            "median_p50": percentile([x.stale_p50 for x in s if x.stale_p50], 50) if s else None,
        }

    def latency(values: Sequence[float]) -> dict[str, float]:
        return {
            "n": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "max": max(values) if values else float("nan"),
        }

    burst = [ms for _, phase, ms, code in run.posts if phase == "submit" and 200 <= code < 300]
    steady_posts = [ms for _, phase, ms, code in run.posts if phase == "steady" and code < 300]
    gets = [ms for _, ms, code, _ in run.gets if code == 200]
    failed = sum(1 for *_, code in run.posts if not 200 <= code < 300) + sum(
        1 for _, _, code, _ in run.gets if code != 200
    )
    steady = [x for x in run.samples if x.phase == "steady"]
    submit_s = run.phases.get("start", 0) - run.phases.get("submit", 0)
    return {
        "workers": args.workers,
        "tasks": args.tasks,
        "collect_interval_configured": args.collect_interval,
        "collect_interval": run.pace.get("collect_interval", args.collect_interval),
        "node_timeout": run.pace.get("node_timeout"),
        "phases": run.phases,
        "submit_rate": args.tasks / submit_s if submit_s else None,
        "start_s": run.phases.get("steady", 0) - run.phases.get("start", 0),
        "staleness_steady": stale(["steady"]),
        "staleness_all": stale(["join", "submit", "start", "steady"]),
        "post_burst_ms": latency(burst),
        "post_steady_ms": latency(steady_posts),
        "get_tasks_ms": latency(gets),
        "get_tasks_bytes": run.gets[-1][3] if run.gets else 0,
        "failed_requests": failed,
        "errors": run.errors[:50],
        "manager_cpu_steady_pct": percentile([x.manager_cpu for x in steady], 50),
        "manager_cpu_total_s": manager_cpu_s,
        "fleet_cpu_steady_pct": percentile([x.fleet_cpu for x in steady], 50),
        "fleet_cpu_total_s": fleet_cpu_s,
        "manager_peak_rss": peak or max((x.manager_rss for x in run.samples), default=0),
        "samples": [vars(x) for x in run.samples],
        "posts": run.posts,
        "gets": run.gets,
    }


# --- output ---------------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> str:
    interval = result["collect_interval"]
    limit = TARGET_STALENESS_FACTOR * interval
    st, sa = result["staleness_steady"], result["staleness_all"]
    get, pb, ps = result["get_tasks_ms"], result["post_burst_ms"], result["post_steady_ms"]
    peak = result["manager_peak_rss"] / MiB

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else "met" if ok else "MISSED"

    def under(value: float | None, bound: float) -> bool | None:
        return None if value is None else value <= bound

    rows = [
        {
            "what": "collection interval in force / node timeout (cube.manager.pacing)",
            "target": f"configured {result['collect_interval_configured']:g} s",
            "measured": f"{interval:g} s / {result['node_timeout'] or 0:g} s",
            "verdict": "-",
        },
        {
            "what": "node data age, steady (max)",
            "target": f"<= {limit:g} s",
            "measured": _s(st["max"]),
            "verdict": verdict(under(st["max"], limit)),
        },
        {
            "what": "node data age, steady (median of per-sample p99)",
            "target": f"<= {limit:g} s",
            "measured": _s(st["median_p99"]),
            "verdict": verdict(under(st["median_p99"], limit)),
        },
        {
            "what": "node data age, whole run incl. join and submit (max)",
            "target": f"<= {limit:g} s",
            "measured": _s(sa["max"]),
            "verdict": verdict(under(sa["max"], limit)),
        },
        {
            "what": f"GET /v1/tasks ({result['get_tasks_bytes'] / MiB:.1f} MiB), p50 / p99",
            "target": f"p99 < {TARGET_LATENCY_MS:g} ms",
            "measured": f"{get['p50']:.0f} / {get['p99']:.0f} ms (n={get['n']})",
            "verdict": verdict(get["p99"] < TARGET_LATENCY_MS),
        },
        {
            "what": "POST /v1/tasks during the submission burst, p50 / p99",
            "target": f"p99 < {TARGET_LATENCY_MS:g} ms",
            "measured": f"{pb['p50']:.0f} / {pb['p99']:.0f} ms (n={pb['n']})",
            "verdict": verdict(pb["p99"] < TARGET_LATENCY_MS),
        },
        {
            "what": "POST /v1/tasks, steady state, p50 / p99",
            "target": f"p99 < {TARGET_LATENCY_MS:g} ms",
            "measured": f"{ps['p50']:.0f} / {ps['p99']:.0f} ms (n={ps['n']})",
            "verdict": verdict(ps["p99"] < TARGET_LATENCY_MS),
        },
        {
            "what": "manager peak memory (VmHWM)",
            "target": "< 1 GiB",
            "measured": f"{peak:,.0f} MiB",
            "verdict": verdict(result["manager_peak_rss"] < TARGET_MEMORY),
        },
        {
            "what": "manager CPU, steady (median, % of one core)",
            "target": "-",
            "measured": f"{result['manager_cpu_steady_pct']:.0f} %",
            "verdict": "-",
        },
        {
            "what": "fleet CPU, steady (median, % of one core)",
            "target": "-",
            "measured": f"{result['fleet_cpu_steady_pct']:.0f} %",
            "verdict": "-",
        },
        {
            "what": "submission rate / time until all running",
            "target": "-",
            "measured": f"{result['submit_rate'] or 0:,.0f} tasks/s / {result['start_s']:.0f} s",
            "verdict": "-",
        },
        {
            "what": "failed requests",
            "target": "0",
            "measured": str(result["failed_requests"]),
            "verdict": verdict(result["failed_requests"] == 0),
        },
    ]
    columns = [("what", "measure"), ("target", "target"), ("measured", "measured")]
    return table(rows, [*columns, ("verdict", "")])


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    limit = TARGET_STALENESS_FACTOR * result["collect_interval"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    t = [s["t"] for s in samples]
    ax1.plot(t, [s["stale_max"] for s in samples], label="max over nodes")
    ax1.plot(t, [s["stale_p99"] for s in samples], label="p99 over nodes")
    ax1.axhline(limit, color="red", linestyle=":", label=f"target {limit:g} s")
    ax1.set_ylabel("node data age (s)")
    ax1.legend(loc="upper right")
    ax1.set_title(
        f"{result['workers']:,} simulated workers, {result['tasks']:,} tasks, "
        f"collect interval {result['collect_interval']:g} s"
    )
    posts = result["posts"]
    ax2.scatter([p[0] for p in posts], [p[2] for p in posts], s=2, label="POST /v1/tasks")
    gets = result["gets"]
    ax2.scatter([g[0] for g in gets], [g[1] for g in gets], s=8, label="GET /v1/tasks")
    ax2.axhline(TARGET_LATENCY_MS, color="red", linestyle=":", label="target p99")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (ms)")
    ax2.legend(loc="upper right")
    ax3.plot(t, [s["manager_cpu"] for s in samples], label="manager CPU %")
    ax3.plot(t, [s["fleet_cpu"] for s in samples], label="fleet CPU %", alpha=0.6)
    ax3.set_ylabel("CPU (% of one core)")
    ax3.set_xlabel("seconds since start")
    rss = ax3.twinx()
    rss.plot(t, [s["manager_rss"] / MiB for s in samples], color="black", label="manager RSS")
    rss.set_ylabel("manager RSS (MiB)")
    ax3.legend(loc="upper left")
    for ax in (ax1, ax2, ax3):
        for phase, start in result["phases"].items():
            ax.axvline(start, color="grey", linewidth=0.5)
            if ax is ax1:
                ax.text(start, ax.get_ylim()[1], f" {phase}", va="top", fontsize=8)
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--collect-interval", type=float, default=1.0, help="the manager's")
    parser.add_argument("--scheduler", default="epvm")
    parser.add_argument("--concurrency", type=int, default=32, help="POSTs in flight at once")
    parser.add_argument("--duration", type=float, default=60.0, help="steady-state seconds")
    parser.add_argument("--gets", type=int, default=200, help="GET /v1/tasks in steady state")
    parser.add_argument("--steady-posts", type=int, default=200, help="POSTs in steady state")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after joining")
    parser.add_argument("--timeout", type=float, default=600.0, help="for each wait")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, db)")
    output_arguments(parser)
    args = parser.parse_args(argv)

    info = machine()
    print(
        f"# {info['date']}  {info['nproc']} x {info['cpu_model']}, {info['memory_gib']} GiB, "
        f"load {info['load_avg_at_start']}",
        file=sys.stderr,
    )
    work = Path(tempfile.mkdtemp(prefix="cube-bench-"))
    try:
        result = asyncio.run(bench(args, work))
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(result))
    if args.json:
        save_json(args.json, {"machine": info, "args": vars(args), "result": result})
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
