"""The worker: runs tasks as containers on one node and reports on the machine."""

from cube.worker.agent import Worker
from cube.worker.api import create_app
from cube.worker.metrics import MachineSampler

__all__ = ["MachineSampler", "Worker", "create_app"]
