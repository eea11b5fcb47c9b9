"""Prometheus metrics of the manager and the workers, served at ``GET /metrics``.

Each agent has its own registry (:class:`ManagerTelemetry`, :class:`WorkerTelemetry`),
never prometheus_client's global one: a test process runs several agents at once.
"""

from cube.metrics.http import METRICS_PATH, install_metrics, metrics_rule
from cube.metrics.manager import ManagerTelemetry
from cube.metrics.worker import WorkerTelemetry

__all__ = [
    "METRICS_PATH",
    "ManagerTelemetry",
    "WorkerTelemetry",
    "install_metrics",
    "metrics_rule",
]
