"""A worker's metrics: its tasks read at scrape time, and what its runners report.

Every series carries the worker's ``node`` name, so that a Prometheus scraping several
workers (or a ``cube dev``, whose manager and worker share a host) can tell them apart.
Restarts are the tasks' own counts (kube-state-metrics'
``kube_pod_container_status_restarts_total``); engine errors are those the worker's
:class:`~cube.worker.engine.EngineWatch` noted. The rest comes through the hooks of
:class:`WorkerTelemetry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cube.metrics.http import request_histogram
from cube.task.model import Task
from cube.task.state import State

if TYPE_CHECKING:
    from cube.worker.agent import Worker

#: A container's create and start: tenths of a second alone, seconds on a busy engine.
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def worker_state_metrics(
    node: str, *, live: Sequence[Task], known: Sequence[Task], engine_errors: int
) -> list[Metric]:
    """``live``: the tasks this worker supervises now; ``known``: every task it keeps."""
    running = GaugeMetricFamily(
        "cube_worker_containers_running",
        "Containers of this worker's tasks that are running.",
        labels=["node"],
    )
    running.add_metric([node], sum(1 for t in live if t.state is State.RUNNING and t.container_id))
    restarts = CounterMetricFamily(
        "cube_worker_task_restarts",
        "Restarts of each task by its restart policy (engine restarts not counted).",
        labels=["node", "task", "name"],
    )
    for t in known:
        restarts.add_metric([node, t.id, t.name], t.restarts)
    errors = CounterMetricFamily(
        "cube_worker_engine_errors",
        "Times the worker found its container engine out of reach: a call refused, or "
        "its event stream dropped.",
        labels=["node"],
    )
    errors.add_metric([node], engine_errors)
    return [running, restarts, errors]


class WorkerState(Collector):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def collect(self) -> Iterable[Metric]:
        w = self._worker
        return worker_state_metrics(
            w.name,
            live=[r.task for r in w.runners.values()],
            known=w.list_tasks(),
            engine_errors=w.engine.errors,
        )


class WorkerTelemetry:
    """One worker's registry and the hooks its runners and loops call.

    Without a ``worker`` only the hooks' metrics are kept: a runner built on its own
    (in tests) still has hooks to call.
    """

    def __init__(self, worker: Worker | None, *, name: str) -> None:
        self.registry = CollectorRegistry()
        if worker is not None:
            self.registry.register(WorkerState(worker))
        self.requests = request_histogram(self.registry)
        self._health_failures = Counter(
            "cube_worker_health_check_failures",
            "Health checks of a task that failed (each probe, not each restart).",
            ["node", "task", "name"],
            registry=self.registry,
        )
        self._node = name
        self._start_seconds = Histogram(
            "cube_worker_container_start_duration_seconds",
            "Time to create and start a task's container (its image pull not included).",
            ["node"],
            buckets=START_BUCKETS,
            registry=self.registry,
        ).labels(name)
        self._reconnects = Counter(
            "cube_worker_event_stream_reconnects",
            "Times the worker opened the engine's event stream again after it ended.",
            ["node"],
            registry=self.registry,
        ).labels(name)

    def health_check_failed(self, task: Task) -> None:
        self._health_failures.labels(self._node, task.id, task.name).inc()

    def container_started(self, seconds: float) -> None:
        self._start_seconds.observe(seconds)

    def event_stream_reconnected(self) -> None:
        self._reconnects.inc()
