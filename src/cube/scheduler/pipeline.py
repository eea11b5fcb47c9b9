"""The stack: feasibility -> score -> pick, and the four algorithms built from it.

A :class:`Scheduler` is Nomad's "stack" in miniature. For one task it

1. runs the feasibility checkers over the nodes (:func:`filter_nodes`), starting
   at a cursor and stopping after ``candidate_limit`` feasible nodes;
2. scores those candidates with its :class:`Scorer` and normalises to 0..1;
3. picks the best, ties to the smallest name (:func:`ranked`, :func:`pick`);

and returns a :class:`Decision` saying what it did and why.

**The candidate limit.** Scoring every node of a 5,000-node cluster for every
task is too slow in Python, and Nomad does not do it either: it stops after a few
feasible nodes (``max(2, log2 n)`` for services). Cube stops after
``candidate_limit`` feasible nodes (16 by default), so a cluster with at most that
many feasible nodes is always searched exhaustively and the choice is the true
best. In larger clusters the choice is the best of a window, and the Decision
says how many nodes were examined. A task is reported unplaceable only after
every node was examined.

Why 16: ``bench/scheduler.py`` (5,000 nodes, 100,000 placements, one process,
alternating runs) measured E-PVM at about 4,100 placements per CPU-second with 32
candidates, 4,700 with 24 and 5,500 with 16, for an E-PVM cost (its own objective,
lower is better) 0.7 % higher at 16 than at 32. Bin-pack pays more for each
candidate: its window sticks where nodes are being filled, so between two
candidates lie nodes too full for the task; 32 -> 16 halved the nodes it examines
(204 -> 97) with the same packing (93.4 % of nodes used, 93.2 % full).

**Where the window starts.** Nodes are examined in the order given, which should
be by name (``Store.list_nodes`` returns them so); the cursor is a node *name*,
found by bisection, so it survives nodes joining and leaving. How the cursor
moves is part of each algorithm:

* ``rotate`` (E-PVM, spread, round-robin): the next placement starts after the
  last node examined, so successive placements look at different nodes (Nomad's
  source iterator keeps its offset the same way).
* ``sticky`` (bin-pack): the next placement starts at the first feasible node of
  this one, so the window keeps seeing the nodes being filled and only moves on
  when they are full (next-fit over windows), without rescanning full nodes.
  One cursor for every task, not one per task shape: with a cursor per shape,
  each shape rescans every node the other shapes filled since its last placement
  (the scheduler bench, 200 shapes, examined twice as many nodes).

A Scheduler builds the checkers of a task shape (:func:`shape_of`) once, not per
placement; it remembers :data:`MAX_SHAPES` shapes and forgets the oldest first.

Round-robin is a limit of 1 with a rotating window: the first feasible node after
the one picked last, in name order.

A Scheduler keeps that cursor between calls, so use one per scheduling loop; it
does no I/O and does not change the nodes (see :mod:`cube.scheduler.allocation`
for the caller's bookkeeping).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Sequence
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple

from cube.errors import FieldError, InvalidSpec
from cube.node import Node
from cube.scheduler.decision import (
    MAX_FILTERED,
    MAX_SCORES,
    Decision,
    failure_reason,
    success_reason,
)
from cube.scheduler.facts import FactsCache
from cube.scheduler.feasibility import (
    Checker,
    Feasibility,
    MisfitFn,
    Shape,
    checkers_for,
    filter_nodes,
    fused_misfit,
    shape_of,
)
from cube.scheduler.scoring import BinPack, Epvm, RoundRobin, Scorer, Spread, normalise
from cube.scheduler.select import ranked
from cube.task.spec import TaskSpec

#: Feasible nodes scored per placement (see "The candidate limit" above).
DEFAULT_CANDIDATE_LIMIT = 16
#: Task shapes whose checkers a Scheduler keeps. Fleets run a few; the scheduler bench 200.
MAX_SHAPES = 1024

_name = attrgetter("name")


class _Plan(NamedTuple):
    """What a Scheduler keeps per task shape: its checkers and their fused test."""

    checkers: tuple[Checker, ...]
    misfit: MisfitFn | None


class Window(StrEnum):
    """How the candidate window moves between placements (see the module docstring)."""

    ROTATE = "rotate"
    STICKY = "sticky"


class Scheduler:
    """Places tasks with one scorer; every call returns an explainable :class:`Decision`."""

    def __init__(
        self,
        scorer: Scorer,
        *,
        candidate_limit: int | None = DEFAULT_CANDIDATE_LIMIT,
        window: Window = Window.ROTATE,
    ) -> None:
        if candidate_limit is not None and candidate_limit < 1:
            raise ValueError("candidate_limit must be at least 1 (or None for no limit)")
        self.scorer = scorer
        self.candidate_limit = candidate_limit
        self.window = window
        # Start at the first node whose name is > (or >= when inclusive) this name; the
        # index it had is a hint that saves the bisection when the node list is unchanged.
        self._cursor: tuple[str, bool, int] | None = None
        self._plans: dict[Shape, _Plan] = {}  # oldest first
        self._facts = FactsCache()  # the nodes' fields, read once per node version

    @property
    def algorithm(self) -> str:
        return self.scorer.name

    def reset(self) -> None:
        """Forget where the last placement stopped: the next one starts at the first node."""
        self._cursor = None

    def place(
        self, spec: TaskSpec, nodes: Sequence[Node], *, skip: Collection[str] = ()
    ) -> Decision:
        """Choose a node for ``spec`` among ``nodes`` (sorted by name), or explain why none fits.

        ``skip``: names of nodes to pass over, as if they were not in ``nodes`` (but
        without a new list: the facts cache and the cursor keep their positions).
        """
        total = len(nodes)
        limit = self.candidate_limit
        if total == 0:
            return Decision(
                node=None, algorithm=self.algorithm, reason=failure_reason(spec, [], 0), limit=limit
            )
        plan = self._plan(spec)
        found = filter_nodes(
            nodes,
            plan.checkers,
            limit=limit,
            start=self._start(nodes),
            explain=MAX_FILTERED,
            misfit=plan.misfit,
            cache=self._facts,
            skip=skip,
        )
        self._advance(nodes, found)
        filtered = {r.node.name: r.reason for r in found.rejected[:MAX_FILTERED]}
        counts = found.counts()
        candidates = found.candidates
        if not candidates:
            return Decision(
                node=None,
                algorithm=self.algorithm,
                reason=failure_reason(spec, found.rejected, total),
                filtered=filtered,
                filtered_counts=counts,
                examined=found.examined,
                total=total,
                limit=limit,
            )
        raw = self.scorer.score(spec, candidates)
        norm = normalise(raw, lower_is_better=self.scorer.lower_is_better)
        names = [c.name for c in candidates]
        top = ranked(names, norm, MAX_SCORES)  # top[0] is what pick() would choose
        best = top[0]
        # Validated from plain dicts in one call: half the cost of building each NodeScore.
        return Decision.model_validate(
            {
                "node": names[best],
                "algorithm": self.algorithm,
                "reason": success_reason(names[best], self.algorithm, found, total),
                "scores": {names[i]: {"raw": raw[i], "score": norm[i]} for i in top},
                "filtered": filtered,
                "filtered_counts": counts,
                "candidates": len(candidates),
                "examined": found.examined,
                "total": total,
                "limit": limit,
            }
        )

    def _plan(self, spec: TaskSpec) -> _Plan:
        shape = shape_of(spec)
        plan = self._plans.get(shape)
        if plan is None:
            if len(self._plans) >= MAX_SHAPES:
                del self._plans[next(iter(self._plans))]
            checkers = checkers_for(spec)
            plan = self._plans[shape] = _Plan(checkers, fused_misfit(spec, checkers))
        return plan

    def _start(self, nodes: Sequence[Node]) -> int:
        if self._cursor is None:
            return 0
        name, inclusive, hint = self._cursor
        if hint < len(nodes) and nodes[hint].name == name:
            index = hint if inclusive else hint + 1
        else:
            find = bisect_left if inclusive else bisect_right
            index = find(nodes, name, key=_name)
        return index if index < len(nodes) else 0

    def _advance(self, nodes: Sequence[Node], found: Feasibility) -> None:
        if self.window is Window.STICKY:
            if found.first is not None:
                self._cursor = (nodes[found.first].name, True, found.first)
        elif found.last is not None:
            self._cursor = (nodes[found.last].name, False, found.last)


def _round_robin(candidate_limit: int | None) -> Scheduler:
    # The limit is the algorithm here: take the first feasible node after the cursor.
    return Scheduler(RoundRobin(), candidate_limit=1, window=Window.ROTATE)


def _epvm(candidate_limit: int | None) -> Scheduler:
    return Scheduler(Epvm(), candidate_limit=candidate_limit, window=Window.ROTATE)


def _bin_pack(candidate_limit: int | None) -> Scheduler:
    return Scheduler(BinPack(), candidate_limit=candidate_limit, window=Window.STICKY)


def _spread(candidate_limit: int | None) -> Scheduler:
    return Scheduler(Spread(), candidate_limit=candidate_limit, window=Window.ROTATE)


_FACTORIES: dict[str, Callable[[int | None], Scheduler]] = {
    "round-robin": _round_robin,
    "epvm": _epvm,
    "bin-pack": _bin_pack,
    "spread": _spread,
}

#: The algorithm names :func:`make_scheduler` accepts.
ALGORITHMS: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_ALGORITHM = "epvm"


def make_scheduler(
    name: str = DEFAULT_ALGORITHM, *, candidate_limit: int | None = DEFAULT_CANDIDATE_LIMIT
) -> Scheduler:
    """A fresh scheduler for algorithm ``name`` (one of :data:`ALGORITHMS`).

    ``candidate_limit`` bounds the feasible nodes examined per placement (``None``:
    all); round-robin always takes the first feasible node and ignores it.
    Raises :class:`InvalidSpec` naming the ``scheduler`` field for an unknown name.
    """
    factory = _FACTORIES.get(name.strip().lower())
    if factory is None:
        raise InvalidSpec(
            [
                FieldError(
                    "scheduler",
                    f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}",
                )
            ]
        )
    return factory(candidate_limit)
