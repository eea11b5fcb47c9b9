"""Start latency and burst throughput: Cube against Docker itself and Docker Swarm.

One task, then bursts of 20 and 100 tasks of the local busybox image (``sleep 600``,
limits 0.5 CPU and 8 MiB; ``_docker.CPU`` says why not less) on a one-node cluster,
timed from submit to all Running, on:

* ``cube``: a fresh ``cube dev`` (manager + local worker in one process) per trial;
  the N tasks are submitted with N concurrent ``POST /v1/tasks``, and the clock stops
  when ``GET /v1/tasks?state=running`` on the manager lists all N (polled every 50 ms).
  Also recorded, to separate container start from state propagation: when ``docker
  ps`` first shows all N containers running (polled every 50 ms), and when the worker
  recorded the last one Running (its event times: no polling needed);
* ``docker-api``: the same containers (image, command, limits, labels, log settings)
  created and started with the Engine API calls Cube's worker makes (create, start),
  over the same Unix socket with httpx, all N at once (``parallel``: Cube starts every
  task's container concurrently too) and one after the other (``sequential``);
* ``docker-cli``: ``docker run -d`` with the same options, N processes at once and one
  after the other, for reference;
* ``swarm``: ``docker service create --replicas N`` (Engine API, no image resolution:
  nothing can be pulled here), until Swarm lists N tasks Running (polled every 50 ms).

Every trial runs each system once, in an order rotated from trial to trial so slow
drift of a shared machine hits all of them alike. Each run starts from nothing of its
own on the engine and removes everything it created before the next one.

    python bench/start.py                          # 1, 20, 100 tasks; 3 trials; ~10-20 min
    python bench/start.py --sizes 100 --trials 5 --json out.json --plot start.png
    python bench/start.py --systems cube,docker-api-parallel --sizes 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _common import ints, machine, median, names_of, output_arguments, save_figure, save_json, table
from _docker import (
    BENCH_LABEL,
    COMMAND,
    CPU,
    IMAGE,
    MEMORY,
    NODE_CPU,
    WORKDIR,
    Agent,
    CpuMeter,
    Engine,
    EngineError,
    free_port,
    parse_docker_time,
    run_id,
    task_body,
    token_file,
    until,
)

SYSTEMS = (
    "cube",
    "docker-api-parallel",
    "docker-api-sequential",
    "docker-cli-parallel",
    "docker-cli-sequential",
    "swarm",
)
BASELINE = "docker-api-parallel"
#: The issue's targets, for the largest burst.
TARGET_SIZE = 100
TARGET_RATIO = 1.15
POLL = 0.05
#: Tasks asked about per poll while confirming Running (see _confirm_running).
ASKED = 4
#: The network ``docker swarm init`` creates and ``docker swarm leave`` leaves behind.
GWBRIDGE = "docker_gwbridge"
TIMEOUT = 600.0


@dataclass
class Run:
    """One system starting ``size`` containers once."""

    system: str
    size: int
    trial: int
    seconds: float = float("nan")
    #: Cube only: all POSTs answered, all containers running per docker, the worker's last
    #: Running event, the manager listing all Running.
    submitted: float = float("nan")
    docker_running: float = float("nan")
    worker_running: float = float("nan")
    #: A job (bench/jobs.py): when the manager lists every allocation Running.
    manager_running: float = float("nan")
    #: CPU seconds used during the measurement by the Cube process, the engine (dockerd and
    #: containerd) and the benchmark's own process (the client: for docker-api, all of it).
    cube_cpu: float = float("nan")
    engine_cpu: float = float("nan")
    client_cpu: float = float("nan")
    #: (seconds since submit, how many running) for the plot.
    curve: list[tuple[float, int]] = field(default_factory=list)
    error: str = ""

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "curve"}


class Bench:
    def __init__(
        self, engine: Engine, rid: str, workdir: Path, *, env: dict[str, str] | None = None
    ) -> None:
        self.engine = engine
        self.env = env or {}
        self.rid = rid
        self.workdir = workdir
        self.labels = {BENCH_LABEL: rid}
        self.swarm_initialised = False
        self.swarm_ok = False
        self.gwbridge_existed = True
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{self.rid}-{prefix}{self._count}"

    # --- Cube ---------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def dev_node(self) -> AsyncIterator[tuple[Agent, httpx.AsyncClient, str]]:
        """A fresh ``cube dev`` (manager and worker in one process) whose worker has joined:
        the agent, a client for its API, and the worker's name. Killed afterwards, and
        every container of its worker removed."""
        name = self._name("w")
        port = free_port(2)
        data = self.workdir / name
        agent = Agent(
            [
                "dev",
                *("--port", str(port), "--name", name, "--data-dir", str(data)),
                *("--cpu", str(NODE_CPU)),
            ],
            url=f"http://127.0.0.1:{port}",
            log_path=self.workdir / f"{name}.log",
            env=self.env,
        )
        try:
            await asyncio.to_thread(agent.start)
            agent.token_path = token_file(data)
            async with httpx.AsyncClient(
                base_url=agent.url,
                headers=agent.headers(),
                timeout=60,
                # Idle connections dropped before uvicorn closes them (5 s): no reuse races.
                limits=httpx.Limits(max_connections=None, keepalive_expiry=2.0),
            ) as client:
                await until(lambda: _node_ready(client, name), what="the worker to join")
                yield agent, client, name
        finally:
            agent.kill()
            await self.engine.remove_labelled(worker_selector(name))
            # A job's allocations have networks of their own, which the killed agent leaves.
            await self.engine.remove_networks(worker_selector(name))
            shutil.rmtree(data, ignore_errors=True)

    async def cube(self, run: Run) -> None:
        async with self.dev_node() as (agent, client, name):
            selector = worker_selector(name)
            started: asyncio.Queue[str] = asyncio.Queue()
            ids: list[str] = []
            async with self.engine.starts(selector, started):
                assert agent.proc is not None
                meter = CpuMeter(agent.proc.pid)
                t0, wall0 = time.monotonic(), time.time()

                async def submit(i: int) -> None:
                    response = await client.post("/v1/tasks", json=task_body(f"{name}-{i}"))
                    response.raise_for_status()
                    ids.append(response.json()["id"])

                async def submit_all() -> None:
                    await asyncio.gather(*(submit(i) for i in range(run.size)))
                    run.submitted = time.monotonic() - t0

                async def manager_running() -> None:
                    await _confirm_running(client, started, ids, run.size)
                    run.seconds = time.monotonic() - t0
                    run.cube_cpu, run.engine_cpu, run.client_cpu = meter.read()

                await asyncio.wait_for(asyncio.gather(submit_all(), manager_running()), TIMEOUT)
            listed = (await client.get("/v1/tasks", params={"state": "running"})).json()
            if len(listed) != run.size:
                raise RuntimeError(f"{len(listed)} of {run.size} tasks Running at the end")
            running = await _running_events(client, ids)
            run.worker_running = max(running) - wall0
            run.curve = _cumulative([t - wall0 for t in running])
            run.docker_running = await self.last_started(selector) - wall0

    async def last_started(self, labels: dict[str, str]) -> float:
        """When the last of the containers with ``labels`` started (Docker's ``StartedAt``)."""
        latest = 0.0
        for row in await self.engine.containers(labels, running=False):
            info = await self.engine.inspect(row["Id"])
            if info is not None:
                latest = max(latest, parse_docker_time(info["State"]["StartedAt"]))
        return latest

    # --- Docker, directly ----------------------------------------------------------------------
    async def docker_api(self, run: Run, *, parallel: bool) -> None:
        async def start(name: str) -> None:
            await self.engine.run(name, labels=self.labels)

        await self._burst(run, self._name("api"), start, parallel=parallel)

    async def docker_cli(self, run: Run, *, parallel: bool) -> None:
        async def start(name: str) -> None:
            proc = await asyncio.create_subprocess_exec(
                *_docker_run_args(name, self.labels),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise EngineError(f"docker run: {err.decode().strip()}")

        await self._burst(run, self._name("cli"), start, parallel=parallel)

    async def _burst(
        self,
        run: Run,
        prefix: str,
        start: Callable[[str], Awaitable[None]],
        *,
        parallel: bool,
    ) -> None:
        """Start ``run.size`` containers with ``start``, all at once or one after the other."""
        sem = asyncio.Semaphore(run.size if parallel else 1)
        meter = CpuMeter()
        t0 = time.monotonic()

        async def one(i: int) -> None:
            async with sem:
                await start(f"{prefix}-{i}")
                run.curve.append((time.monotonic() - t0, len(run.curve) + 1))

        wall0 = time.time()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(run.size))), TIMEOUT)
            run.seconds = time.monotonic() - t0
            _, run.engine_cpu, run.client_cpu = meter.read()
            run.docker_running = await self.last_started(self.labels) - wall0
        finally:
            await self.engine.remove_labelled(self.labels)

    # --- Swarm ---------------------------------------------------------------------------------
    async def setup_swarm(self) -> None:
        self.swarm_ok = False
        state = await self.engine.swarm_state()
        if state == "inactive":
            if not self.swarm_initialised:
                self.gwbridge_existed = await self.engine.network_exists(GWBRIDGE)
            out = await asyncio.to_thread(
                subprocess.run,
                ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                print(f"swarm init failed, skipping Swarm: {out.stderr.strip()}", file=sys.stderr)
                return
            self.swarm_initialised = True
            print("swarm initialised (left again at the end)", file=sys.stderr)
        elif state != "active":
            print(f"swarm is {state!r} on this engine, skipping Swarm", file=sys.stderr)
            return
        self.swarm_ok = True

    def teardown_swarm(self) -> None:
        if self.swarm_initialised:
            _docker("swarm", "leave", "--force")
            if not self.gwbridge_existed:  # swarm init made it; leaving does not remove it
                _docker("network", "rm", GWBRIDGE)
            print("left the swarm this run initialised", file=sys.stderr)

    async def swarm(self, run: Run) -> None:
        if self.swarm_ok and await self.engine.swarm_state() == "inactive":
            await self.setup_swarm()  # somebody else on this engine left it meanwhile
        if not self.swarm_ok:
            run.error = "no swarm"
            return
        name = self._name("svc")
        meter = CpuMeter()
        t0, wall0 = time.monotonic(), time.time()
        service = await self.engine.create_service(name, replicas=run.size, labels=self.labels)
        try:
            while True:
                count = await self.engine.service_running(service)
                run.curve.append((time.monotonic() - t0, count))
                if count >= run.size:
                    _, run.engine_cpu, run.client_cpu = meter.read()
                    break
                if time.monotonic() - t0 > TIMEOUT:
                    raise TimeoutError(f"swarm: {count} of {run.size} running after {TIMEOUT}s")
                await asyncio.sleep(POLL)
            run.seconds = time.monotonic() - t0
            run.docker_running = await self.last_started(self.labels) - wall0
        finally:
            await self.remove_services()

    async def remove_services(self) -> None:
        for service in await self.engine.services(self.labels):
            await self.engine.remove_service(service)
        # Swarm removes a service's containers in the background: wait, so that the next
        # measurement does not share the engine with that clean-up.
        deadline = time.monotonic() + 120
        while await self.engine.containers(self.labels, running=False):
            if time.monotonic() > deadline:
                await self.engine.remove_labelled(self.labels)
                break
            await asyncio.sleep(0.2)

    # --- one measurement -----------------------------------------------------------------------
    def actions(self) -> dict[str, Callable[[Run], Awaitable[None]]]:
        """System name -> how to measure one run of it."""
        return {
            "cube": self.cube,
            "docker-api-parallel": lambda r: self.docker_api(r, parallel=True),
            "docker-api-sequential": lambda r: self.docker_api(r, parallel=False),
            "docker-cli-parallel": lambda r: self.docker_cli(r, parallel=True),
            "docker-cli-sequential": lambda r: self.docker_cli(r, parallel=False),
            "swarm": self.swarm,
        }

    async def measure(self, system: str, size: int, trial: int, *, attempts: int = 3) -> Run:
        """Run one measurement; again (up to ``attempts``) if the engine went away meanwhile
        (others restart it on a shared machine)."""
        actions = self.actions()
        for attempt in range(1, attempts + 1):
            run = Run(system=system, size=size, trial=trial)
            try:
                await actions[system](run)
                return run
            except (httpx.HTTPError, EngineError, RuntimeError, TimeoutError) as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                print(f"  {system} x{size}: attempt {attempt} failed: {run.error}", file=sys.stderr)
                await self.recover()
        return run

    async def recover(self) -> None:
        """Wait for the engine to answer again and remove whatever this run left."""
        await until(self._engine_up, what="the Docker engine", limit=300)
        await self.engine.remove_labelled(self.labels)
        await self.engine.remove_cube_containers(worker_prefix=self.rid)

    async def _engine_up(self) -> bool:
        try:
            await self.engine.swarm_state()
        except (httpx.HTTPError, EngineError):
            return False
        return True


def _docker_run_args(name: str, labels: dict[str, str]) -> list[str]:
    return [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")),
        "--cpus",
        str(CPU),
        "--memory",
        str(MEMORY),
        "--memory-swap",
        str(MEMORY),
        "--security-opt",
        "no-new-privileges",
        "--log-opt",
        "max-size=10m",
        "--log-opt",
        "max-file=3",
        IMAGE,
        *COMMAND,
    ]


def worker_selector(name: str) -> dict[str, str]:
    """The labels of every container Cube's worker ``name`` runs."""
    return {"cube.managed-by": "cube", "cube.worker": name}


async def _node_ready(client: httpx.AsyncClient, name: str) -> bool:
    response = await client.get(f"/v1/nodes/{name}")
    return response.status_code == 200 and response.json().get("state") == "ready"


async def _running_events(client: httpx.AsyncClient, ids: Sequence[str]) -> list[float]:
    """When the worker recorded each of ``ids`` Running (its first time), wall clock."""
    out = []
    for task_id in ids:
        events = (await client.get(f"/v1/tasks/{task_id}/events")).json()
        out.append(
            min(datetime.fromisoformat(e["time"]) for e in events if e["state"] == "running")
        )
    return [t.timestamp() for t in out]


def _cumulative(times: Sequence[float]) -> list[tuple[float, int]]:
    return [(t, i) for i, t in enumerate(sorted(times), start=1)]


def _docker(*args: str) -> None:
    subprocess.run(["docker", *args], capture_output=True, check=False)


async def _confirm_running(
    client: httpx.AsyncClient, started: asyncio.Queue[str], ids: list[str], size: int
) -> None:
    """Return once the manager says all ``size`` tasks are Running, asking as little as possible.

    A full listing every 50 ms would cost the manager more than the rest of its work. So
    only tasks whose container Docker reports started (``started``, from the engine's event
    stream) are asked about, :data:`ASKED` of them every 50 ms in turn: the last container
    to start is the last task asked about, so the end is timed to within a poll. If nothing
    has been confirmed for 5 s, every submitted task joins the questions (an event missed).
    """
    confirmed: set[str] = set()
    waiting: list[str] = []
    progress = time.monotonic()
    while len(confirmed) < size:
        while not started.empty():
            waiting.append(started.get_nowait())
        if time.monotonic() - progress > 5.0:
            waiting.extend(t for t in ids if t not in confirmed and t not in waiting)
            progress = time.monotonic()
        asked, waiting = waiting[:ASKED], waiting[ASKED:]
        answers = await asyncio.gather(*(client.get(f"/v1/tasks/{t}") for t in asked))
        for task_id, response in zip(asked, answers, strict=True):
            if response.status_code == 200 and response.json()["state"] == "running":
                confirmed.add(task_id)
                progress = time.monotonic()
            else:
                waiting.append(task_id)  # at the back: the others get their turn
        if len(confirmed) < size:
            await asyncio.sleep(POLL)


# --- the report -----------------------------------------------------------------------------------
def summarise(runs: Sequence[Run], known: Sequence[str] = SYSTEMS) -> list[dict[str, Any]]:
    """One row per size and system of ``known`` (in that order), medians over the trials."""
    rows: list[dict[str, Any]] = []
    sizes = sorted({r.size for r in runs})
    systems = [s for s in known if any(r.system == s for r in runs)]
    for size in sizes:
        baseline = median([r.seconds for r in runs if _ok(r, BASELINE, size)])
        for system in systems:
            mine = [r for r in runs if _ok(r, system, size)]
            if not mine:
                continue
            secs = [r.seconds for r in mine]
            row: dict[str, Any] = {
                "size": size,
                "system": system,
                "trials": len(mine),
                "median_s": median(secs),
                "min_s": min(secs),
                "max_s": max(secs),
                "ms_per_task": median(secs) / size * 1000,
                "docker_running_s": median([r.docker_running for r in mine]),
                "engine_cpu_s": median([r.engine_cpu for r in mine]),
                "client_cpu_s": median([r.client_cpu for r in mine]),
                "vs_docker_api_parallel": median(secs) / baseline if baseline else float("nan"),
            }
            if system == "cube":
                row["submitted_s"] = median([r.submitted for r in mine])
                row["worker_running_s"] = median([r.worker_running for r in mine])
                row["propagation_s"] = median([r.seconds - r.docker_running for r in mine])
                row["cube_cpu_s"] = median([r.cube_cpu for r in mine])
            rows.append(row)
    return rows


def _ok(run: Run, system: str, size: int) -> bool:
    return run.system == system and run.size == size and not run.error


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    def get(system: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["system"] == system and r["size"] == TARGET_SIZE), None)

    cube, swarm = get("cube"), get("swarm")
    out = []
    if cube is not None:
        ratio = cube["vs_docker_api_parallel"]
        out.append(
            f"target: cube within {TARGET_RATIO}x of direct Docker (API, parallel) for "
            f"{TARGET_SIZE} tasks: {ratio:.2f}x -> {'met' if ratio <= TARGET_RATIO else 'MISSED'}"
        )
        if swarm is not None:
            faster = cube["median_s"] < swarm["median_s"]
            out.append(
                f"target: cube faster than Swarm for {TARGET_SIZE} tasks: "
                f"{cube['median_s']:.2f}s vs {swarm['median_s']:.2f}s -> "
                f"{'met' if faster else 'MISSED'}"
            )
    return out


COLUMNS = [
    ("size", "tasks"),
    ("system", "system"),
    ("trials", "n"),
    ("median_s", "median s"),
    ("min_s", "min s"),
    ("max_s", "max s"),
    ("ms_per_task", "ms/task"),
    ("vs_docker_api_parallel", "x docker-api-parallel"),
    ("docker_running_s", "last StartedAt s"),
    ("engine_cpu_s", "engine CPU s"),
    ("client_cpu_s", "client CPU s"),
]
CUBE_COLUMNS = [
    ("size", "tasks"),
    ("submitted_s", "all submitted s"),
    ("docker_running_s", "docker: all running s"),
    ("worker_running_s", "worker: all Running s"),
    ("median_s", "manager: all Running s"),
    ("propagation_s", "docker -> manager s"),
    ("cube_cpu_s", "cube CPU s"),
]


def plot(runs: Sequence[Run], rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(5 * (len(sizes) + 1), 4.5))
    colours = dict(zip(SYSTEMS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, size in zip(axes, sizes, strict=False):
        mine = [r for r in rows if r["size"] == size]
        ys = range(len(mine))
        ax.barh(
            list(ys),
            [r["median_s"] for r in mine],
            xerr=[
                [r["median_s"] - r["min_s"] for r in mine],
                [r["max_s"] - r["median_s"] for r in mine],
            ],
            color=[colours[r["system"]] for r in mine],
        )
        for y, r in zip(ys, mine, strict=True):
            if r["system"] == "cube":
                ax.plot([r["docker_running_s"]], [y], "k|", markersize=18)
        ax.set_yticks(list(ys), [r["system"] for r in mine])
        ax.invert_yaxis()
        ax.set_xlabel("seconds, submit to all Running (median; whiskers min-max)")
        ax.set_title(f"{size} task{'s' if size > 1 else ''}  (| cube: docker shows all running)")
    # Running containers over time in the last trial of the largest burst.
    ax = axes[-1]
    largest = max(sizes)
    last = max(r.trial for r in runs if r.size == largest)
    for run in runs:
        if run.size == largest and run.trial == last and run.curve and not run.error:
            xs, ys2 = zip(*sorted(run.curve), strict=True)
            ax.step(xs, ys2, where="post", label=run.system, color=colours[run.system])
    ax.set_xlabel("seconds since submit")
    ax.set_ylabel("running")
    ax.set_title(f"{largest} tasks, trial {last}: running over time")
    ax.legend(fontsize=8)
    save_figure(fig, path)


async def run_trials(
    bench: Bench, systems: Sequence[str], sizes: Sequence[int], trials: int, *, attempts: int = 3
) -> list[Run]:
    """Each system once per trial and size, in an order rotated from trial to trial; then
    remove what the runs left, leave the swarm if this run made one, close the engine."""
    runs: list[Run] = []
    try:
        if "swarm" in systems:
            await bench.setup_swarm()
        for size in sizes:
            for trial in range(1, trials + 1):
                k = (trial - 1) % len(systems)
                for system in [*systems[k:], *systems[:k]]:
                    run = await bench.measure(system, size, trial, attempts=attempts)
                    runs.append(run)
                    extra = (
                        f" (docker {run.docker_running:.2f}s, worker {run.worker_running:.2f}s, "
                        f"manager {run.manager_running:.2f}s)"
                        if system.startswith("cube")
                        else ""
                    )
                    print(
                        f"  x{size} trial {trial} {system}: {run.seconds:.2f}s{extra} {run.error}",
                        file=sys.stderr,
                    )
    finally:
        try:
            await bench.remove_services()
            await bench.engine.remove_labelled(bench.labels)
        finally:
            bench.teardown_swarm()
            await bench.engine.aclose()
    return runs


async def amain(args: argparse.Namespace) -> int:
    info = machine()
    rid = run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"cube-start-{rid}-", dir=WORKDIR))
    engine = Engine()
    env = dict(item.split("=", 1) for item in args.agent_env)
    bench = Bench(engine, rid, workdir, env=env)
    systems = [s for s in SYSTEMS if s in args.systems]
    print(f"run {rid}: logs in {workdir}", file=sys.stderr)
    runs = await run_trials(bench, systems, args.sizes, args.trials)
    rows = summarise(runs)
    if rows:
        print(table(rows, COLUMNS))
        print()
    if cube_rows := [r for r in rows if r["system"] == "cube"]:
        print(table(cube_rows, CUBE_COLUMNS))
        print()
    lines = verdicts(rows)
    print("\n".join(lines))
    if args.json:
        save_json(
            args.json,
            {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "summary": rows,
                "verdicts": lines,
                "runs": [{**r.row(), "curve": r.curve} for r in runs],
            },
        )
    if args.plot:
        plot(runs, rows, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=ints, default=[1, 20, 100], help="tasks per burst")
    parser.add_argument("--trials", type=int, default=3, help="trials per size and system")
    parser.add_argument(
        "--systems", type=names_of(SYSTEMS), default=list(SYSTEMS), help=f"of {','.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the cube process, e.g. PYTHONPATH=DIR to try a dependency",
    )
    output_arguments(parser)
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
