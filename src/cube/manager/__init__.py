"""The manager: desired state of the cluster, placement, and reconciliation with nodes."""

from cube.manager.api import create_app
from cube.manager.core import Manager
from cube.manager.workers import WorkerClient

__all__ = ["Manager", "WorkerClient", "create_app"]
