"""Job records for the pure job decisions (reconcile, converge, deploy): specs, versions,
allocations, nodes, a clock, and hypothesis strategies over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from cube.job.model import (
    Allocation,
    AllocDesired,
    AllocStatus,
    Job,
    JobVersion,
    RescheduleEvent,
    group_hash,
)
from cube.job.parse import parse_job
from cube.job.plan import Plan
from cube.job.reconcile import reconcile
from cube.job.spec import JobSpec
from cube.node import NodeState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class N:
    """A node as the reconciler reads it (cube.node.Node has the same attributes)."""

    name: str
    state: NodeState = NodeState.READY
    drain: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    datacenter: str = "dc1"


def spec(type: str = "service", **group: Any) -> JobSpec:
    """A job ``shop`` of one group ``web`` of one task; ``group`` overrides group fields."""
    body: dict[str, Any] = {"name": "web", "tasks": [{"name": "api", "image": "cube-busybox"}]}
    if type != "system":
        body["count"] = 3
    body.update(group)
    return parse_job({"job": "shop", "type": type, "groups": [body]})


def version(s: JobSpec, number: int = 1) -> JobVersion:
    return JobVersion.of(s, number, now=T0)


def alloc(
    v: JobVersion,
    index: int,
    node: str | None = "n1",
    status: AllocStatus = AllocStatus.RUNNING,
    **fields: Any,
) -> Allocation:
    """An allocation of group ``web`` at version ``v``, created at T0 (finished at T0 if done)."""
    terminal = status in (AllocStatus.COMPLETE, AllocStatus.FAILED, AllocStatus.LOST)
    defaults: dict[str, Any] = {
        "job": "shop",
        "group": "web",
        "index": index,
        "version": v.number,
        "group_hash": group_hash(v.spec, v.spec.groups[0]),
        "node": node,
        "status": status,
        "created_at": T0,
        "finished_at": T0 if terminal else None,
    }
    return Allocation(**{**defaults, **fields})


def plan_for(
    v: JobVersion,
    allocs: list[Allocation],
    nodes: list[N] | None = None,
    now: datetime = T0,
    **job: Any,
) -> Plan:
    nodes = [N("n1"), N("n2"), N("n3")] if nodes is None else nodes
    return reconcile(Job(id="shop", version=v.number, **job), v, allocs, nodes, now)


def shape(plan: Plan) -> dict[str, list[Any]]:
    """The plan without its reasons: what a table test compares."""
    out: dict[str, list[Any]] = {
        "place": [(p.index, p.replaces, p.node) for p in plan.place],
        "stop": [(s.alloc, s.lost) for s in plan.stop],
        "update": [u.alloc for u in plan.update],
        "in_place": [i.alloc for i in plan.in_place],
        "keep": [k.alloc for k in plan.keep],
        "wait": [(w.index, w.alloc, w.due) for w in plan.wait],
    }
    return {key: value for key, value in out.items() if value}


STATUSES = st.sampled_from(list(AllocStatus))


@st.composite
def two_versions(draw: st.DrawFn) -> tuple[JobVersion, JobVersion]:
    """A job of any type and size at version 1, and version 2 that runs another image."""
    kind = draw(st.sampled_from(["service", "batch", "system"]))
    fields: dict[str, Any] = {}
    if kind != "system":
        fields["count"] = draw(st.integers(0, 6))
    if kind == "batch":
        fields["parallelism"] = draw(st.integers(1, 3))
    old = version(spec(kind, **fields))
    return old, version(spec(kind, **fields, tasks=[{"name": "api", "image": "img:2"}]), 2)


def some_allocations(
    draw: st.DrawFn, versions: tuple[JobVersion, JobVersion], nodes: list[str | None]
) -> list[Allocation]:
    """Allocations in any state: either version, any index, node, status, desire, history."""
    return [
        alloc(
            draw(st.sampled_from(versions)),
            draw(st.integers(0, 7)),
            draw(st.sampled_from(nodes)),
            draw(STATUSES),
            id=f"a{i}",
            desired=draw(st.sampled_from(list(AllocDesired))),
            reschedule_events=[RescheduleEvent(time=T0, prev_alloc="x")] * draw(st.integers(0, 2)),
        )
        for i in range(draw(st.integers(0, 8)))
    ]
