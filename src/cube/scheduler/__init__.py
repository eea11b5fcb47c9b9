"""Pick a node for a task: feasibility filters, then scores, then the best (pure logic, no I/O).

Usage::

    scheduler = make_scheduler("epvm")          # or "round-robin", "bin-pack", "spread"
    decision = scheduler.place(spec, store.list_nodes())
    decision.node        # "w2", or None when nothing fits
    decision.reason      # "no node has 2.0 free CPU; largest free: 1.5 on w2"
    decision.model_dump_json()                   # store it with the task, show it in the CLI

The caller records a placement with :func:`allocate` before placing the next task.
"""

from cube.scheduler.allocation import allocate, allocate_all, release, request
from cube.scheduler.decision import MAX_FILTERED, MAX_SCORES, Decision, NodeScore, failure_reason
from cube.scheduler.facts import FactsCache, NodeFacts
from cube.scheduler.feasibility import Checker, Feasibility, Rejection, checkers_for, filter_nodes
from cube.scheduler.pipeline import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    DEFAULT_CANDIDATE_LIMIT,
    Scheduler,
    Window,
    make_scheduler,
)
from cube.scheduler.scoring import LIEB, BinPack, Epvm, RoundRobin, Scorer, Spread, normalise
from cube.scheduler.select import pick, ranked

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "DEFAULT_CANDIDATE_LIMIT",
    "LIEB",
    "MAX_FILTERED",
    "MAX_SCORES",
    "BinPack",
    "Checker",
    "Decision",
    "Epvm",
    "FactsCache",
    "Feasibility",
    "NodeFacts",
    "NodeScore",
    "Rejection",
    "RoundRobin",
    "Scheduler",
    "Scorer",
    "Spread",
    "Window",
    "allocate",
    "allocate_all",
    "checkers_for",
    "failure_reason",
    "filter_nodes",
    "make_scheduler",
    "normalise",
    "pick",
    "ranked",
    "release",
    "request",
]
