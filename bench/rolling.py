"""The rolling part of ``bench/jobs.py``: a rolling update of an HTTP service, Cube vs Swarm.

``N`` busybox httpd containers (an HTTP health check every 0.5 s, a host port each) run
image tag ``cube-busybox:rolling-a``; each system moves them to ``cube-busybox:rolling-b``
(the same image under a new tag, so that only the tag changes), in the same run:

* ``cube``: a service job with ``update: {order: start-first, max_parallel: 5,
  min_healthy_time: 1s}`` on a fresh ``cube dev``; submitting the new version starts the
  clock, its deployment reported Successful stops it.
* ``swarm``: ``docker service create`` of the same containers, then ``docker service update
  --image ... --update-parallelism 5 --update-order start-first`` (the issue's flags; Swarm
  keeps its own defaults otherwise, e.g. ``--update-monitor 5s``); the command's return
  (it waits for the update to converge) stops the clock.

Meanwhile a poller asks every container of the service (found from Docker by label) on its
host port every 100 ms and records the fewest answering at any poll; at the end, every
running container must be of the new tag. Target (issue 14): faster than Swarm, and never
fewer answering than ``count``. The poll that found the fewest is kept (when, how many
ran, how the others failed), and for Cube where the time went, batch by batch
(:mod:`rolling_profile`). ``--trials`` runs alternate which system goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from _docker import BENCH_LABEL, IMAGE, Engine
from rolling_profile import profile
from start import Bench

OLD_TAG, NEW_TAG = "cube-busybox:rolling-a", "cube-busybox:rolling-b"
SERVE = "echo ok > /tmp/index.html; httpd -f -p 8080 -h /tmp"
POLL_EVERY = 0.1
MIN_HEALTHY_TIME = 1.0
#: Docker's label of a Swarm task's container: its service's name.
SWARM_SERVICE = "com.docker.swarm.service.name"


@dataclass
class RollingRun:
    system: str
    size: int
    trial: int = 1
    seconds: float = float("nan")  # from the update's submission to all-new
    fewest_answering: int = -1
    #: The poll with the fewest answering (see Poller.worst).
    worst_poll: dict[str, Any] = field(default_factory=dict)
    polls: int = 0
    all_new: bool = False
    images: list[str] = field(default_factory=list)  # of the running containers at the end
    error: str = ""
    #: Cube's only: where the time went, batch by batch (bench/rolling_profile.py).
    batches: list[dict[str, Any]] = field(default_factory=list)


def rolling_job(name: str, count: int, image: str) -> dict[str, Any]:
    return {
        "job": name,
        "update": {
            "order": "start-first",
            "max_parallel": 5,
            "min_healthy_time": f"{MIN_HEALTHY_TIME:g}s",
            "healthy_deadline": "60s",
            "progress_deadline": "120s",
        },
        "groups": [
            {
                "name": "http",
                "count": count,
                "tasks": [
                    {
                        "name": "httpd",
                        "image": image,
                        "command": ["sh", "-c", SERVE],
                        "ports": ["8080"],
                        "health": {
                            "http": {"port": 8080, "path": "/index.html"},
                            "interval": "500ms",
                        },
                        "stop_timeout": "1s",
                        "resources": {"cpu": 0.05, "memory": "16MiB"},
                    }
                ],
            }
        ],
    }


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )


@contextlib.contextmanager
def tags() -> Any:
    """The two tags of the test image, removed again (untagged only) at the end."""
    for tag in (OLD_TAG, NEW_TAG):
        _docker("tag", IMAGE, tag)
    try:
        yield
    finally:
        for tag in (OLD_TAG, NEW_TAG):
            _docker("rmi", tag)


class Poller:
    """Every 100 ms: each running container with ``labels`` asked on its host port."""

    def __init__(self, engine: Engine, labels: Mapping[str, str]) -> None:
        self.engine, self.labels = engine, labels
        self.fewest: int | None = None
        #: The poll that found the fewest answering: when (seconds after t0), how many
        #: containers ran, and how the others failed.
        self.worst: dict[str, Any] = {}
        self.t0 = time.time()
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    async def _containers(self) -> list[dict[str, Any]]:
        return await self.engine.containers(self.labels, running=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                started = time.monotonic()
                ports = [
                    p["PublicPort"]
                    for c in await self._containers()
                    for p in c.get("Ports", [])
                    if p.get("PrivatePort") == 8080 and p.get("PublicPort")
                ]
                answers = await asyncio.gather(
                    *(http.get(f"http://127.0.0.1:{port}/index.html") for port in set(ports)),
                    return_exceptions=True,
                )
                ok = sum(
                    1 for a in answers if isinstance(a, httpx.Response) and a.status_code == 200
                )
                if self.fewest is None or ok < self.fewest:
                    self.fewest = ok
                    self.worst = {
                        "at": round(time.time() - self.t0, 2),
                        "running": len(set(ports)),
                        "failures": sorted(
                            type(a).__name__
                            if isinstance(a, Exception)
                            else f"HTTP {a.status_code}"
                            for a in answers
                            if not (isinstance(a, httpx.Response) and a.status_code == 200)
                        ),
                    }
                self.polls += 1
                await asyncio.sleep(max(0.0, POLL_EVERY - (time.monotonic() - started)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Poller]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def images(self) -> set[str]:
        return {c["Image"] for c in await self._containers()}


async def _deployed(client: httpx.AsyncClient, job: str, version: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = (await client.get(f"/v1/jobs/{job}/deployments")).raise_for_status().json()
        mine = [d for d in found if d["version"] == version]
        if mine and mine[-1]["status"] == "successful":
            return
        if mine and mine[-1]["status"] in ("failed", "rolled-back", "cancelled"):
            raise RuntimeError(f"deployment of version {version}: {mine[-1]['status_reason']}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"deployment of version {version} not successful after {limit:g}s")


async def cube_rolling(bench: Bench, size: int, limit: float) -> RollingRun:
    run = RollingRun("cube", size)
    async with bench.dev_node() as (_, client, name):
        job = f"{name}-roll"
        (await client.post("/v1/jobs", json=rolling_job(job, size, OLD_TAG))).raise_for_status()
        await _deployed(client, job, 1, limit)
        poller = Poller(bench.engine, {"cube.job": job})
        async with poller.running():
            await asyncio.sleep(0.5)
            t0, submitted = time.monotonic(), time.time()
            poller.t0 = submitted
            (await client.post("/v1/jobs", json=rolling_job(job, size, NEW_TAG))).raise_for_status()
            await _deployed(client, job, 2, limit)
            run.seconds = time.monotonic() - t0
        run.fewest_answering, run.polls = poller.fewest or 0, poller.polls
        run.worst_poll = poller.worst
        run.images = sorted(await poller.images())
        run.all_new = set(run.images) == {NEW_TAG}
        run.batches = await profile(
            client, bench.engine, job, 2, submitted=submitted, min_healthy_time=MIN_HEALTHY_TIME
        )
    return run


async def swarm_rolling(bench: Bench, size: int, limit: float) -> RollingRun:
    run = RollingRun("swarm", size)
    await bench.setup_swarm()
    if not bench.swarm_ok:
        run.error = "no swarm"
        return run
    name = f"{bench.rid}-roll"
    created = await asyncio.to_thread(
        _docker,
        "service", "create", "--name", name, "--replicas", str(size), "--no-resolve-image",
        "--label", f"{BENCH_LABEL}={bench.rid}",
        "--publish", "mode=host,target=8080",
        "--health-cmd", "wget -q -O /dev/null http://127.0.0.1:8080/index.html || exit 1",
        "--health-interval", "500ms", "--stop-grace-period", "1s",
        "--limit-cpu", "0.05", "--limit-memory", "16M",
        OLD_TAG, "sh", "-c", SERVE,
        timeout=limit,
    )  # fmt: skip
    try:
        if created.returncode != 0:
            run.error = f"service create: {created.stderr.strip()}"
            return run
        poller = Poller(bench.engine, {SWARM_SERVICE: name})
        async with poller.running():
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            poller.t0 = time.time()
            updated = await asyncio.to_thread(
                _docker,
                "service", "update", "--image", NEW_TAG, "--no-resolve-image",
                "--update-parallelism", "5", "--update-order", "start-first", name,
                timeout=limit,
            )  # fmt: skip
            run.seconds = time.monotonic() - t0
        if updated.returncode != 0:
            run.error = f"service update: {updated.stderr.strip()}"
        run.fewest_answering, run.polls = poller.fewest or 0, poller.polls
        run.worst_poll = poller.worst
        run.images = sorted({i.split("@")[0] for i in await poller.images()})
        run.all_new = set(run.images) == {NEW_TAG}
    finally:
        await asyncio.to_thread(_docker, "service", "rm", name)
    return run


ROLLING_SYSTEMS = ("cube", "swarm")


async def rolling_part(
    bench: Bench,
    sizes: list[int],
    limit: float,
    systems: Sequence[str] = ROLLING_SYSTEMS,
    *,
    trials: int = 1,
) -> dict[str, Any]:
    """Cube, then Swarm, at each size, ``trials`` times (the order alternating from one
    trial to the next); the swarm this run initialised is left at the end."""
    runs: list[RollingRun] = []
    measures = [m for s, m in (("cube", cube_rolling), ("swarm", swarm_rolling)) if s in systems]
    try:
        with tags():
            for size in sizes:
                for trial in range(1, trials + 1):
                    for measure in measures if trial % 2 else measures[::-1]:
                        try:
                            run = await measure(bench, size, limit)
                        except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
                            system = measure.__name__.split("_")[0]
                            run = RollingRun(system, size, error=str(exc))
                        run.trial = trial
                        runs.append(run)
    finally:
        bench.teardown_swarm()
    return {"runs": [r.__dict__ for r in runs], "verdicts": verdicts(runs, sizes)}


def verdicts(runs: Sequence[RollingRun], sizes: Sequence[int]) -> list[str]:
    """The issue's two targets at each size: on the median time, and the fewest answering
    in any trial."""
    out = []
    for size in sizes:
        ok = [r for r in runs if r.size == size and not r.error]
        cube = [r for r in ok if r.system == "cube"]
        swarm = [r for r in ok if r.system == "swarm"]
        if cube:
            fewest = min(r.fewest_answering for r in cube)
            out.append(
                f"{size}: cube median {statistics.median(r.seconds for r in cube):.1f}s over"
                f" {len(cube)} trials, fewest answering {fewest} of {size}"
                f" ({'met' if fewest >= size else 'MISSED'}: never fewer than count)"
            )
        if cube and swarm:
            mine = statistics.median(r.seconds for r in cube)
            theirs = statistics.median(r.seconds for r in swarm)
            out.append(
                f"{size}: cube vs swarm, median {mine:.1f}s vs {theirs:.1f}s"
                f" ({'met' if mine < theirs else 'MISSED'}: faster than Swarm); swarm's fewest"
                f" answering {min(r.fewest_answering for r in swarm)}"
            )
    return out
