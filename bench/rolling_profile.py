"""Where the time of one Cube rolling update goes, batch by batch (``bench/rolling.py``).

Read after the update from the records Cube keeps and from Docker, all in one clock (one
machine): for each allocation of the new version, when the job pass placed it
(``created_at``), when the worker accepted its task (the task's Scheduled event: the send
arrived), when Docker started its container (``State.StartedAt``), when the worker saw it
healthy (the task's Running event: the first passing check), and when the manager's pass
recorded it ready (``ready_since``). The allocation is deemed healthy
``min_healthy_time`` after that; the pass that sees it places the next batch, or ends the
deployment (its ``finished_at``: the last row, of size 0).

A *batch* is the allocations one pass placed (``created_at`` within :data:`SAME_PASS`).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import httpx
from _docker import Engine, parse_docker_time

#: Placements this close together came from one pass.
SAME_PASS = 0.3
TASK_ID_LABEL = "cube.task-id"


@dataclass
class Batch:
    """One batch's phases, in seconds: the slowest allocation of the batch in each."""

    at: float  # placed, from the update's submission
    size: int
    #: From the moment an allocation of an earlier batch could be deemed healthy (the last
    #: such moment before this placement) to this placement (the job pass's delay).
    healthy_to_placed: float
    place_to_accepted: float
    accepted_to_started: float  # the worker's start: image, create, network, start
    started_to_healthy: float  # in Docker to the worker's first passing check
    healthy_to_seen: float  # the worker's report to the manager's pass


def _ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


async def _event_time(client: httpx.AsyncClient, task_id: str, state: str) -> float | None:
    events = (await client.get(f"/v1/tasks/{task_id}/events")).raise_for_status().json()
    return next((_ts(e["time"]) for e in events if e["state"] == state), None)


async def profile(
    client: httpx.AsyncClient,
    engine: Engine,
    job: str,
    version: int,
    *,
    submitted: float,
    min_healthy_time: float,
) -> list[dict[str, Any]]:
    """The batches of ``job``'s update to ``version`` (``submitted``: a Unix time), and a
    last row: the deployment's end (``size`` 0)."""
    allocs = (await client.get("/v1/allocations", params={"job": job})).raise_for_status().json()
    new = [a for a in allocs if a["version"] == version and a["replaces"] is not None]
    deployments = (await client.get(f"/v1/jobs/{job}/deployments")).raise_for_status().json()
    finished = _ts(next(d["finished_at"] for d in deployments if d["version"] == version))
    started: dict[str, float] = {}
    for row in await engine.containers({"cube.job": job}, running=True):
        found = await engine.inspect(row["Id"])
        if found is not None:
            started[row["Labels"].get(TASK_ID_LABEL, "")] = parse_docker_time(
                found["State"]["StartedAt"]
            )
    rows = []
    for a in sorted(new, key=lambda a: a["created_at"]):
        (task_id,) = [t["id"] for t in a["tasks"].values()]
        accepted, healthy = await asyncio.gather(
            _event_time(client, task_id, "scheduled"), _event_time(client, task_id, "running")
        )
        rows.append(
            {
                "placed": _ts(a["created_at"]),
                "accepted": accepted,
                "started": started.get(task_id),
                "healthy": healthy,
                "seen": _ts(a["ready_since"]),
            }
        )
    batches: list[list[dict[str, Any]]] = []
    for row in rows:
        if batches and row["placed"] - batches[-1][0]["placed"] < SAME_PASS:
            batches[-1].append(row)
        else:
            batches.append([row])
    # Every placement after the first batch fills a slot a healthy verdict freed: the
    # latest moment one could be deemed healthy before it (ready + min_healthy_time),
    # to the placement, is the time the pass took to act on it.
    due = sorted(r["seen"] + min_healthy_time for r in rows if r["seen"])
    out = []
    for batch in batches:
        placed = batch[0]["placed"]
        freed = [d for d in due if d <= placed]

        def slowest(later: str, earlier: str, rows: list[dict[str, Any]] = batch) -> float:
            gaps = [r[later] - r[earlier] for r in rows if r[later] and r[earlier]]
            return round(max(gaps), 2) if gaps else float("nan")

        out.append(
            asdict(
                Batch(
                    at=round(placed - submitted, 2),
                    size=len(batch),
                    healthy_to_placed=round(placed - freed[-1], 2) if freed else float("nan"),
                    place_to_accepted=slowest("accepted", "placed"),
                    accepted_to_started=slowest("started", "accepted"),
                    started_to_healthy=slowest("healthy", "started"),
                    healthy_to_seen=slowest("seen", "healthy"),
                )
            )
        )
    if finished is not None and due:
        out.append(
            {
                "at": round(finished - submitted, 2),
                "healthy_to_placed": round(finished - due[-1], 2),
                "size": 0,
            }
        )
    return out
