"""The manager's metrics: its state read at scrape time, and a few timings it reports.

Gauges of tasks, allocations, jobs and nodes are computed from the manager's records
when Prometheus scrapes (:class:`ManagerState`), so there is no second count to drift
from the truth. Counters and histograms of what happens between scrapes (scheduling
decisions, passes) are observed through the small hooks of :class:`ManagerTelemetry`.

Names follow Prometheus' guide (``cube_`` prefix, base units in the name) and echo
kube-state-metrics (``kube_node_status_capacity`` → ``cube_node_capacity_*``) and
Nomad (``nomad.client.allocated.cpu`` → ``cube_node_allocated_cpu_cores``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cube.job.model import Allocation, Job, JobStatus
from cube.metrics.http import request_histogram
from cube.node import Node, NodeState
from cube.scheduler import Decision, Scheduler
from cube.task.model import Task
from cube.task.spec import TaskSpec
from cube.task.state import State

if TYPE_CHECKING:
    from cube.manager.core import Manager

#: Buckets of the manager's passes, from a quiet one-node cluster to a busy 1,000-node one.
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: One placement: microseconds on a few nodes, milliseconds on thousands.
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


@dataclass(frozen=True)
class Snapshot:
    """What the manager holds, as the collector reads it."""

    tasks: Sequence[Task]
    nodes: Sequence[Node]  # views: ``allocated`` from the manager's own records
    jobs: Sequence[Job]
    allocs: Sequence[Allocation]


def state_metrics(snap: Snapshot, *, now: datetime) -> list[Metric]:
    """The gauges of ``snap`` at ``now`` (pure: the collector passes the clock)."""
    return [
        *_task_metrics(snap.tasks, now),
        *_alloc_and_job_metrics(snap.allocs, snap.jobs),
        *_node_metrics(snap.nodes),
    ]


#: The label that names a job. Not ``job``: Prometheus gives every series it scrapes a
#: ``job`` label (its scrape job's name) and renames the target's own to ``exported_job``,
#: so a ``job`` label could never be queried by its name; kube-state-metrics says
#: ``job_name`` for the same reason.
JOB_LABEL = "job_name"


def _task_metrics(tasks: Sequence[Task], now: datetime) -> list[Metric]:
    by_state = GaugeMetricFamily(
        "cube_tasks",
        "Tasks by state, and by the job and group of their allocation (empty for a task "
        "run on its own).",
        labels=["state", JOB_LABEL, "group"],
    )
    counts = Counter((t.state, *_job_group(t)) for t in tasks)
    for state in State:  # every state, so that sum by (state) is never absent
        counts.setdefault((state, "", ""), 0)
    for (state, job, group), n in sorted(counts.items()):
        by_state.add_metric([state.value, job, group], n)
    each = GaugeMetricFamily(
        "cube_task_state",
        "1 for each task that has not ended, labelled with its current state.",
        labels=["task", "name", "node", "state"],
    )
    pending = []
    for t in tasks:
        if not t.is_terminal:
            each.add_metric([t.id, t.name, t.node or "", t.state.value], 1)
        if t.state is State.PENDING:
            pending.append(t)
    waiting = GaugeMetricFamily(
        "cube_tasks_pending", "Tasks waiting for a node (Pending).", value=len(pending)
    )
    oldest = GaugeMetricFamily(
        "cube_tasks_pending_oldest_age_seconds",
        "How long the task Pending the longest has been so (0 when none is).",
        value=max(((now - t.updated_at).total_seconds() for t in pending), default=0.0),
    )
    return [by_state, each, waiting, oldest]


def _job_group(task: Task) -> tuple[str, str]:
    return ("", "") if task.alloc is None else (task.alloc.job, task.alloc.group)


def _alloc_and_job_metrics(allocs: Sequence[Allocation], jobs: Sequence[Job]) -> list[Metric]:
    by_status = GaugeMetricFamily(
        "cube_allocations",
        "Job allocations by job, group and status (Nomad's job summary).",
        labels=[JOB_LABEL, "group", "status"],
    )
    counts = Counter((a.job, a.group, a.status) for a in allocs)
    for (job, group, status), n in sorted(counts.items()):
        by_status.add_metric([job, group, status.value], n)
    job_status = GaugeMetricFamily("cube_jobs", "Jobs by status.", labels=["status"])
    job_counts = Counter(j.status for j in jobs)
    for job_state in JobStatus:
        job_status.add_metric([job_state.value], job_counts[job_state])
    return [by_status, job_status]


#: (name part, help, unit) of the per-node resources, read from a Resources model.
_RESOURCES = (
    ("cpu_cores", "CPU cores", "cpu"),
    ("memory_bytes", "memory", "memory"),
    ("disk_bytes", "disk", "disk"),
)


def _node_metrics(nodes: Sequence[Node]) -> list[Metric]:
    by_state = GaugeMetricFamily("cube_nodes", "Nodes by state.", labels=["state"])
    counts = Counter(n.state for n in nodes)
    for state in NodeState:
        by_state.add_metric([state.value], counts[state])
    out: list[Metric] = [by_state]
    for kind, what in (("capacity", "offered by"), ("allocated", "requested by the tasks on")):
        for part, noun, field in _RESOURCES:
            family = GaugeMetricFamily(
                f"cube_node_{kind}_{part}", f"The {noun} {what} each node.", labels=["node"]
            )
            for n in nodes:
                family.add_metric([n.name], float(getattr(getattr(n, kind), field)))
            out.append(family)
    return out


class ManagerState(Collector):
    """Reads the manager's records at each scrape (nothing is awaited meanwhile)."""

    def __init__(self, manager: Manager, *, clock: Callable[[], float] = time.time) -> None:
        self._manager = manager
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        m = self._manager
        snap = Snapshot(
            tasks=list(m.tasks.values()),
            nodes=m.list_nodes(),
            jobs=list(m.jobs.jobs.values()),
            allocs=list(m.jobs.allocs.values()),
        )
        return state_metrics(snap, now=datetime.fromtimestamp(self._clock(), UTC))


class ManagerTelemetry:
    """One manager's registry (each its own: tests run several managers in one process),
    and the hooks its loops call."""

    def __init__(self, manager: Manager) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ManagerState(manager))
        self.requests = request_histogram(self.registry)
        self.decisions = CounterMetric(
            "cube_scheduling_decisions",
            "Placements the scheduler decided, for tasks and job allocations (and the dry "
            "runs of cube job plan): placed on a node, or none fits.",
            ["outcome"],
            registry=self.registry,
        )
        self.decision_seconds = Histogram(
            "cube_scheduling_decision_duration_seconds",
            "Time the scheduler took to decide one placement.",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self.collection_seconds = Histogram(
            "cube_collection_pass_duration_seconds",
            "Time a collection pass took to start polling every node (spread over the "
            "collection interval: longer than it means the manager falls behind).",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.node_reconcile_seconds = Histogram(
            "cube_node_reconcile_duration_seconds",
            "Time to bring the manager's tasks in line with one report of a node's tasks "
            "(its answer to a blocking query, or a collection's list), histories included.",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "cube_job_reconcile_pass_duration_seconds",
            "Time a pass of the job service took (derive, reconcile and apply every job).",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )

    def place(
        self,
        scheduler: Scheduler,
        spec: TaskSpec,
        nodes: Sequence[Node],
        *,
        skip: Collection[str] = (),
    ) -> Decision:
        """``scheduler.place(spec, nodes, skip=skip)``, counted and timed."""
        started = time.perf_counter()
        decision = scheduler.place(spec, nodes, skip=skip)
        self.decision_seconds.observe(time.perf_counter() - started)
        self.decisions.labels("placed" if decision.node is not None else "unplaceable").inc()
        return decision

    async def reconciling(self, work: Awaitable[None]) -> None:
        """Await one reconciliation of a node's report, timed."""
        started = time.perf_counter()
        try:
            await work
        finally:
            self.node_reconcile_seconds.observe(time.perf_counter() - started)

    def collected(self, seconds: float) -> None:
        self.collection_seconds.observe(seconds)

    def reconciled(self, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)


__all__ = [
    "ManagerState",
    "ManagerTelemetry",
    "Snapshot",
    "state_metrics",
]
