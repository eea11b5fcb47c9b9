"""Recovery: how long Cube takes to heal a crashed container, a lost worker, a lost manager.

Three scenarios, each repeated ``--trials`` times (medians reported), against real
``cube`` processes and real containers of the local busybox image:

* ``crash``: a task with ``restart: on-failure`` and a fixed delay (``--restart-delay``,
  0.5 s, no backoff) on a ``cube dev`` node; its container is killed with the Engine API
  (``docker kill``). Timed from the kill until the manager reports the task Running in
  a new container; also when the worker recorded the exit and the new Running, and when
  Docker started the new container. Target: under 1 s plus the restart delay.
* ``worker``: a manager (``--node-timeout 3``) and two workers, four tasks spread over
  them; one worker holding tasks is killed with SIGKILL. Timed from the kill until the
  manager reports every one of its tasks Running on the other worker; also when the
  manager marked the node Down. Target: the node timeout plus 2 s. The killed worker is
  then started again (it rejoins, and its stale copies are stopped), and the next trial
  kills the other one, so that every trial moves tasks.
* ``manager``: a manager and one worker running four tasks; the manager is killed with
  SIGKILL and started again at once (same data directory and port). Timed from the kill
  until ``/v1/health`` answers, and until ``GET /v1/tasks`` lists every task Running
  again; the containers must be the same ones (nothing restarted). No target was set.

The manager's view is polled every 20 ms. Every container is removed at the end (by
the workers' names, which carry this run's ID).

    python bench/recovery.py                       # 5 trials of each; about 5 minutes
    python bench/recovery.py --trials 9 --scenarios crash,worker --json out.json --plot r.png
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _common import machine, median, names_of, output_arguments, save_figure, save_json, table
from _docker import (
    BENCH_LABEL,
    WORKDIR,
    Agent,
    Engine,
    EngineError,
    free_port,
    parse_docker_time,
    run_id,
    task_body,
    token_file,
    until,
)

SCENARIOS = ("crash", "worker", "manager")
POLL = 0.02
NODE_TIMEOUT = 3.0
TASKS = 4
#: References, not milestones: how long the same work takes without Cube.
DOCKER_ALONE = "reference: Docker alone (kill, exit, delay, rm, create, start)"
CLI_START = "reference: python -m cube --help"
#: The issue's targets: seconds over the restart delay, and over the node timeout.
CRASH_BUDGET = 1.0
WORKER_BUDGET = 2.0


@dataclass
class Trial:
    scenario: str
    trial: int
    #: Seconds from the fault until the manager reports everything Running again.
    seconds: float = float("nan")
    #: Scenario-specific milestones, seconds from the fault, and references in seconds.
    marks: dict[str, float] = field(default_factory=dict)
    #: How many tasks the fault concerned.
    tasks: int = 0
    error: str = ""


class Recovery:
    def __init__(self, engine: Engine, rid: str, workdir: Path) -> None:
        self.engine = engine
        self.rid = rid
        self.workdir = workdir
        self.names: list[str] = []

    # --- agents --------------------------------------------------------------------------------
    def _agent(self, name: str, args: list[str], port: int) -> Agent:
        return Agent(
            [*args, "--port", str(port), "--data-dir", str(self.workdir / name)],
            url=f"http://127.0.0.1:{port}",
            log_path=self.workdir / f"{name}.log",
        )

    def manager(self, name: str, *extra: str) -> Agent:
        agent = self._agent(name, ["manager", "--scheduler", "round-robin", *extra], free_port())
        agent.token_path = token_file(self.workdir / name)
        return agent

    def worker(self, name: str, manager: Agent, manager_dir: str) -> Agent:
        self.names.append(name)
        join = (self.workdir / manager_dir / "join-token").read_text().strip()
        return self._agent(
            name,
            ["worker", "--name", name, "--manager", manager.url, "--join-token", join],
            free_port(),
        )

    async def cleanup(self) -> None:
        await self.engine.remove_cube_containers(worker_prefix=self.rid)

    # --- crash ---------------------------------------------------------------------------------
    async def crash(self, trials: int, delay: float) -> list[Trial]:
        name = f"{self.rid}-dev"
        self.names.append(name)
        port = free_port(2)
        dev = Agent(
            ["dev", "--port", str(port), "--name", name, "--data-dir", str(self.workdir / name)],
            url=f"http://127.0.0.1:{port}",
            log_path=self.workdir / f"{name}.log",
        )
        out = []
        try:
            await asyncio.to_thread(dev.start)
            dev.token_path = token_file(self.workdir / name)
            async with _client(dev) as client:
                await until(lambda: _node_ready(client, name), what="the worker to join")
                restart = {"policy": "on-failure", "delay": f"{delay}s", "backoff": 1.0}
                response = await client.post("/v1/tasks", json=task_body("crash", restart=restart))
                response.raise_for_status()
                task_id = response.json()["id"]
                await until(lambda: _running(client, [task_id]), what="the task to run")
                for trial in range(1, trials + 1):
                    out.append(await self._crash_once(client, task_id, trial, delay))
        finally:
            dev.kill()
            await self.cleanup()
        return out

    async def _crash_once(
        self, client: httpx.AsyncClient, task_id: str, trial: int, delay: float
    ) -> Trial:
        result = Trial("crash", trial)
        before = (await client.get(f"/v1/tasks/{task_id}")).json()
        old = before["container_id"]
        events_before = len((await client.get(f"/v1/tasks/{task_id}/events")).json())
        t0, wall0 = time.monotonic(), time.time()
        await self.engine.kill(old)
        # When the old container ended, by Docker's clock (before the worker removes it).
        ended = await self.engine.inspect(old)
        for _ in range(20):
            if ended is None or not ended["State"]["Running"]:
                break
            await asyncio.sleep(POLL)
            ended = await self.engine.inspect(old)

        async def restarted() -> bool:
            task = (await client.get(f"/v1/tasks/{task_id}")).json()
            return bool(task["state"] == "running" and task["container_id"] not in (None, old))

        await until(restarted, what="the task to run again", limit=60, every=POLL)
        result.seconds = time.monotonic() - t0
        after = (await client.get(f"/v1/tasks/{task_id}")).json()
        events = (await client.get(f"/v1/tasks/{task_id}/events")).json()[events_before:]
        if ended is not None and not ended["State"]["Running"]:
            result.marks["docker: old container exited"] = (
                parse_docker_time(ended["State"]["FinishedAt"]) - wall0
            )
        result.marks["worker: exit recorded"] = _first(events, "failed") - wall0
        result.marks["worker: restarting"] = _first(events, "scheduled") - wall0
        info = await self.engine.inspect(after["container_id"])
        if info is not None:
            result.marks["docker: new container created"] = (
                parse_docker_time(info["Created"]) - wall0
            )
            result.marks["docker: new container started"] = (
                parse_docker_time(info["State"]["StartedAt"]) - wall0
            )
        result.marks["worker: Running"] = _first(events, "running") - wall0
        result.marks[DOCKER_ALONE] = await self._replace_directly(delay)
        await asyncio.sleep(1.0)  # let the old container's removal settle before the next
        return result

    async def _exited(self, container_id: str) -> bool:
        info = await self.engine.inspect(container_id)
        return info is None or not info["State"]["Running"]

    async def _replace_directly(self, delay: float) -> float:
        """The floor for a restart that replaces the container, without Cube: kill a
        container, wait for its exit, the same delay, remove it, create and start anew.
        Seconds from the kill to the new container's start returning."""
        labels = {BENCH_LABEL: self.rid}
        name = f"{self.rid}-direct"
        old = await self.engine.run(name, labels=labels)
        t0 = time.monotonic()
        await self.engine.kill(old)
        await until(lambda: self._exited(old), what="the direct container to exit", every=0.005)
        await asyncio.sleep(delay)
        await self.engine.remove([old])
        await self.engine.run(name, labels=labels)
        took = time.monotonic() - t0
        await self.engine.remove_labelled(labels)
        return took

    # --- a lost worker -------------------------------------------------------------------------
    async def lost_worker(self, trials: int) -> list[Trial]:
        mname = f"{self.rid}-m"
        manager = self.manager(mname, "--node-timeout", str(NODE_TIMEOUT))
        workers: list[Agent] = []
        out = []
        try:
            await asyncio.to_thread(manager.start)
            names = [f"{self.rid}-w1", f"{self.rid}-w2"]
            workers = [self.worker(n, manager, mname) for n in names]
            for w in workers:
                await asyncio.to_thread(w.start)
            async with _client(manager) as client:
                for n in names:
                    await until(functools.partial(_node_ready, client, n), what=f"{n} to join")
                ids = await _run_tasks(client, "moved")
                for trial in range(1, trials + 1):
                    placed = await _placement(client, ids)
                    victim = max(names, key=lambda n: sum(1 for v in placed.values() if v == n))
                    result = await self._kill_worker(client, workers[names.index(victim)], victim)
                    result.trial = trial
                    result.tasks = sum(1 for v in placed.values() if v == victim)
                    out.append(result)
                    # Back it comes: it rejoins and its stale copies are stopped.
                    await asyncio.to_thread(workers[names.index(victim)].start)
                    await until(functools.partial(_node_ready, client, victim), what="its return")
                    await until(
                        functools.partial(self._no_running, victim),
                        what="its stale copies to stop",
                        limit=60,
                    )
        finally:
            for w in workers:
                w.kill()
            manager.kill()
            await self.cleanup()
        return out

    async def _kill_worker(self, client: httpx.AsyncClient, worker: Agent, name: str) -> Trial:
        result = Trial("worker", 0)
        placed = await _placement(client, None)
        moved = [t for t, n in placed.items() if n == name]
        t0 = time.monotonic()
        worker.kill()

        async def marked_down() -> float:
            await until(lambda: _node_down(client, name), what="node Down", every=POLL)
            return time.monotonic() - t0

        down = asyncio.create_task(marked_down())

        async def elsewhere() -> bool:
            now = await _placement(client, moved, running=True)
            return len(now) == len(moved) and all(n != name for n in now.values())

        await until(elsewhere, what="the tasks to run elsewhere", limit=60, every=POLL)
        result.seconds = time.monotonic() - t0
        result.marks["manager: node Down"] = await down
        return result

    async def _no_running(self, worker: str) -> bool:
        rows = await self.engine.containers({"cube.worker": worker}, running=True)
        return not rows

    # --- a lost manager ------------------------------------------------------------------------
    async def lost_manager(self, trials: int) -> list[Trial]:
        mname = f"{self.rid}-m2"
        manager = self.manager(mname)
        worker: Agent | None = None
        out = []
        try:
            await asyncio.to_thread(manager.start)
            wname = f"{self.rid}-w3"
            worker = self.worker(wname, manager, mname)
            await asyncio.to_thread(worker.start)
            async with _client(manager) as client:
                await until(lambda: _node_ready(client, wname), what="the worker to join")
                ids = await _run_tasks(client, "kept")
                containers = await _containers(client, ids)
                for trial in range(1, trials + 1):
                    result = Trial("manager", trial, tasks=len(ids))
                    result.marks[CLI_START] = await _cli_start()
                    t0 = time.monotonic()
                    manager.kill()
                    await asyncio.to_thread(manager.start, timeout=60)
                    result.marks["/v1/health answers"] = time.monotonic() - t0
                    await until(
                        lambda: _running(client, ids), what="tasks listed", limit=60, every=POLL
                    )
                    result.seconds = time.monotonic() - t0
                    if await _containers(client, ids) != containers:
                        result.error = "containers changed across the manager's restart"
                    out.append(result)
        finally:
            if worker is not None:
                worker.kill()
            manager.kill()
            await self.cleanup()
        return out


# --- asking the manager ---------------------------------------------------------------------------
def _client(agent: Agent) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=agent.url,
        headers=agent.headers(),
        timeout=10,
        # Idle connections dropped before uvicorn closes them (5 s): no reuse races.
        limits=httpx.Limits(keepalive_expiry=2.0),
    )


async def _node_ready(client: httpx.AsyncClient, name: str) -> bool:
    response = await client.get(f"/v1/nodes/{name}")
    return response.status_code == 200 and response.json().get("state") == "ready"


async def _node_down(client: httpx.AsyncClient, name: str) -> bool:
    response = await client.get(f"/v1/nodes/{name}")
    return response.status_code == 200 and response.json().get("state") == "down"


async def _cli_start() -> float:
    """Seconds for ``python -m cube --help`` to run: the floor of an agent's start-up."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cube", "--help", stdout=asyncio.subprocess.DEVNULL
    )
    await proc.wait()
    return time.monotonic() - t0


async def _tasks(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/v1/tasks")
    response.raise_for_status()
    tasks: list[dict[str, Any]] = response.json()
    return tasks


async def _running(client: httpx.AsyncClient, ids: Sequence[str]) -> bool:
    states = {t["id"]: t["state"] for t in await _tasks(client)}
    return all(states.get(i) == "running" for i in ids)


async def _run_tasks(client: httpx.AsyncClient, prefix: str) -> list[str]:
    """Submit TASKS tasks named ``prefix0...``; their IDs, once all of them run."""
    ids = []
    for i in range(TASKS):
        response = await client.post("/v1/tasks", json=task_body(f"{prefix}{i}"))
        response.raise_for_status()
        ids.append(response.json()["id"])
    await until(lambda: _running(client, ids), what="the tasks to run", limit=60)
    return ids


async def _placement(
    client: httpx.AsyncClient, ids: Sequence[str] | None, *, running: bool = False
) -> dict[str, str | None]:
    """Task ID -> its node (only Running tasks with ``running``), for ``ids`` or all."""
    return {
        t["id"]: t["node"]
        for t in await _tasks(client)
        if (ids is None or t["id"] in ids) and (not running or t["state"] == "running")
    }


async def _containers(client: httpx.AsyncClient, ids: Sequence[str]) -> dict[str, str]:
    return {t["id"]: t["container_id"] for t in await _tasks(client) if t["id"] in ids}


def _first(events: Sequence[dict[str, Any]], state: str) -> float:
    times = [datetime.fromisoformat(e["time"]).timestamp() for e in events if e["state"] == state]
    return min(times) if times else float("nan")


# --- the report -----------------------------------------------------------------------------------
def summarise(trials: Sequence[Trial], *, delay: float) -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        mine = [t for t in trials if t.scenario == scenario and not t.error]
        if not mine:
            continue
        secs = [t.seconds for t in mine]
        target = {"crash": CRASH_BUDGET + delay, "worker": NODE_TIMEOUT + WORKER_BUDGET}.get(
            scenario
        )
        row: dict[str, Any] = {
            "scenario": scenario,
            "trials": len(mine),
            "median_s": median(secs),
            "min_s": min(secs),
            "max_s": max(secs),
            "target_s": target,
            "met": "-" if target is None else ("yes" if median(secs) < target else "MISSED"),
        }
        for mark in _marks(mine):
            row[mark] = median([t.marks[mark] for t in mine if mark in t.marks])
        rows.append(row)
    return rows


def _marks(trials: Sequence[Trial]) -> list[str]:
    """Every mark the trials recorded, in the order they were first recorded."""
    return list(dict.fromkeys(m for t in trials for m in t.marks))


COLUMNS = [
    ("scenario", "scenario"),
    ("trials", "n"),
    ("median_s", "median s"),
    ("min_s", "min s"),
    ("max_s", "max s"),
    ("target_s", "target s"),
    ("met", "met"),
]


def plot(trials: Sequence[Trial], rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 4.2), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        mine = [t for t in trials if t.scenario == row["scenario"] and not t.error]
        marks = _marks(mine)
        references = [m for m in marks if m.startswith("reference")]
        labels = [*(m for m in marks if m not in references), "manager: all Running", *references]
        for i, label in enumerate(labels):
            values = [
                t.seconds if label == "manager: all Running" else t.marks.get(label, float("nan"))
                for t in mine
            ]
            ax.scatter(values, [i] * len(values), alpha=0.6)
            ax.plot([median(values)], [i], "k|", markersize=16)
        if row["target_s"] is not None:
            ax.axvline(row["target_s"], color="red", linestyle="--", label="target")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.set_xlabel("seconds after the fault (| median)")
        ax.set_title(f"{row['scenario']}: median {row['median_s']:.2f}s")
    save_figure(fig, path)


async def amain(args: argparse.Namespace) -> int:
    info = machine()
    rid = run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"cube-recovery-{rid}-", dir=WORKDIR))
    engine = Engine()
    bench = Recovery(engine, rid, workdir)
    print(f"run {rid}: logs in {workdir}", file=sys.stderr)
    trials: list[Trial] = []
    actions: dict[str, Callable[[], Awaitable[list[Trial]]]] = {
        "crash": lambda: bench.crash(args.trials, args.restart_delay),
        "worker": lambda: bench.lost_worker(args.trials),
        "manager": lambda: bench.lost_manager(args.trials),
    }
    try:
        for scenario in args.scenarios:
            try:
                done = await actions[scenario]()
            except (httpx.HTTPError, EngineError, RuntimeError, TimeoutError) as exc:
                print(f"{scenario}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                done = [Trial(scenario, 0, error=f"{type(exc).__name__}: {exc}")]
            for t in done:
                marks = ", ".join(f"{k} {v:.2f}" for k, v in t.marks.items())
                print(
                    f"  {scenario} {t.trial}: {t.seconds:.2f}s ({marks}) {t.error}",
                    file=sys.stderr,
                )
            trials.extend(done)
    finally:
        await bench.cleanup()
        await engine.aclose()
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = summarise(trials, delay=args.restart_delay)
    if rows:
        print(table(rows, COLUMNS))
        print()
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in dict(COLUMNS)}
        print(f"{row['scenario']}: medians " + ", ".join(f"{k} {v:.2f}s" for k, v in extra.items()))
    if args.json:
        save_json(
            args.json,
            {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "summary": rows,
                "trials": [t.__dict__ for t in trials],
            },
        )
    if args.plot and rows:
        plot(trials, rows, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per scenario")
    parser.add_argument(
        "--scenarios", type=names_of(SCENARIOS), default=list(SCENARIOS), help=",".join(SCENARIOS)
    )
    parser.add_argument("--restart-delay", type=float, default=0.5, help="crash: seconds")
    parser.add_argument("--keep-logs", action="store_true", help="keep the agents' logs")
    output_arguments(parser)
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
