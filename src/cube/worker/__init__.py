"""The worker: runs tasks as containers on one node and reports on the machine."""

from cube.worker.agent import Worker
from cube.worker.api import create_app
from cube.worker.metrics import MachineSampler
from cube.worker.restart import RestartDecision, decide_restart

__all__ = ["MachineSampler", "RestartDecision", "Worker", "create_app", "decide_restart"]
