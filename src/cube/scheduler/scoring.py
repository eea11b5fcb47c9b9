"""Phase 2 of placement: how good each feasible node is (Nomad's rankers, Kubernetes' Score).

A scorer turns the feasible candidates into one raw float each, in its own unit
and direction (``lower_is_better``). :func:`normalise` then maps every scorer's
output to one range, 0..1 with 1 the best examined candidate, so that picking,
printing and any later weighting of several scorers work the same way.

Scorers work on each candidate's :class:`~cube.scheduler.facts.NodeFacts`, plain
values read once per node version: no model is built or read per node (attribute
reads on pydantic models are the costly part of the hot loop, see
:mod:`cube.scheduler.facts`). ``NodeFacts.of(node)`` makes them from a node.
Every candidate passed feasibility, so its CPU and memory capacity are positive;
the ``_TINY`` floor only protects against hand-built nodes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from cube.scheduler.facts import NodeFacts
from cube.task.spec import TaskSpec

#: Lieb's square-ice constant: the base of the E-PVM cost, as in the Cube book.
#: Any constant > 1 gives the same convex shape; it does not depend on capacities.
LIEB = 1.53960071783900203869

_TINY = 1e-9


class Scorer(Protocol):
    """Rates feasible candidates for one task. May keep state between placements."""

    name: str
    lower_is_better: bool

    def score(self, spec: TaskSpec, candidates: Sequence[NodeFacts]) -> list[float]:
        """One raw score per candidate, in the candidates' order."""
        ...


def normalise(raw: Sequence[float], *, lower_is_better: bool) -> list[float]:
    """Min-max scale raw scores to 0..1, higher is better.

    1.0 is the best examined candidate and 0.0 the worst; when all candidates score
    the same (or there is only one) they all get 1.0. The scale is relative to the
    candidates of one placement, which is all that picking needs.
    """
    if not raw:
        return []
    lo, hi = min(raw), max(raw)
    span = hi - lo
    if span <= 0.0:
        return [1.0] * len(raw)
    if lower_is_better:
        return [(hi - r) / span for r in raw]
    return [(r - lo) / span for r in raw]


class RoundRobin:
    """Every candidate is equally good: the rotation lives in the candidate window.

    The round-robin scheduler examines nodes in name order from just after the
    node it picked last and stops at the first feasible one, so this scorer only
    has to say "fine" (see :func:`cube.scheduler.pipeline.make_scheduler`).
    """

    name = "round-robin"
    lower_is_better = False

    def score(self, spec: TaskSpec, candidates: Sequence[NodeFacts]) -> list[float]:
        return [0.0] * len(candidates)


class Epvm:
    """E-PVM: the opportunity cost of placing the task on a node; lower is better.

    From the Enhanced Parallel Virtual Machine work (Amir et al., used by MOSIX,
    cited by Borg, implemented in the Cube book). The cost of a resource grows
    exponentially with its load, so the marginal cost of adding work is::

        load_r   = allocated_r / capacity_r             (a fraction, 0..1)
        after_r  = (allocated_r + requested_r) / capacity_r
        cost     = sum over r in (cpu, memory) of  LIEB ** after_r - LIEB ** load_r

    with ``LIEB`` ~ 1.5396. Because ``LIEB ** x`` is convex, a node less loaded on
    both CPU and memory always costs less, a node with one hot resource costs more
    than a balanced one with the same total, and a bigger node (smaller
    ``requested/capacity``) costs less than a small one at the same load.

    When the node reports ``stats.cpu_percent``, the CPU load before placement is
    ``(1 - w) * allocated fraction + w * measured fraction`` with ``w =
    measured_weight`` (0.2 by default), so allocation dominates and a node that is
    busier than its reservations say is slightly penalised. The Cube book also adds
    a task-count term; allocation already counts the tasks, so it is left out.
    """

    name = "epvm"
    lower_is_better = True

    def __init__(self, *, measured_weight: float = 0.2, base: float = LIEB) -> None:
        if not 0.0 <= measured_weight <= 1.0:
            raise ValueError("measured_weight must be between 0 and 1")
        if base <= 1.0:
            raise ValueError("base must be greater than 1")
        self.measured_weight = measured_weight
        self.base = base

    def score(self, spec: TaskSpec, candidates: Sequence[NodeFacts]) -> list[float]:
        cpu = spec.resources.cpu
        memory = spec.resources.memory
        base = self.base
        w = self.measured_weight
        out: list[float] = []
        for node in candidates:
            cap_cpu: float = node.cpu
            cap_mem: float = node.memory
            cap_cpu = cap_cpu if cap_cpu > _TINY else _TINY
            cap_mem = cap_mem if cap_mem > _TINY else _TINY
            cpu_before = node.cpu_allocated / cap_cpu
            if w and (measured := node.cpu_measured) is not None:
                cpu_before = (1.0 - w) * cpu_before + w * measured
            mem_before = node.memory_allocated / cap_mem
            cpu_after = cpu_before + cpu / cap_cpu
            mem_after = mem_before + memory / cap_mem
            out.append(base**cpu_after - base**cpu_before + base**mem_after - base**mem_before)
        return out


def free_after(spec: TaskSpec, candidates: Sequence[NodeFacts]) -> Iterator[tuple[float, float]]:
    """Each candidate's free CPU and memory, as fractions of capacity, once the task is placed."""
    cpu, memory = spec.resources.cpu, spec.resources.memory
    for node in candidates:
        cap_cpu, cap_mem = node.cpu, node.memory
        yield (
            1.0 - (node.cpu_allocated + cpu) / (cap_cpu if cap_cpu > _TINY else _TINY),
            1.0 - (node.memory_allocated + memory) / (cap_mem if cap_mem > _TINY else _TINY),
        )


class BinPack:
    """Best fit: prefer the node that will be the most full after placement.

    Nomad's ``ScoreFitBinPack``: with ``free_r`` the free fraction of CPU and memory
    *after* placing the task, ``score = 20 - (10**free_cpu + 10**free_mem)``, from 0
    (empty node) to 18 (both resources exactly full). Higher is better. Packing
    tightly keeps whole nodes free for big tasks and lets idle nodes be removed.
    """

    name = "bin-pack"
    lower_is_better = False

    def score(self, spec: TaskSpec, candidates: Sequence[NodeFacts]) -> list[float]:
        return [20.0 - (10.0**c + 10.0**m) for c, m in free_after(spec, candidates)]


class Spread:
    """Least allocated: prefer the node that will have the most free CPU and memory.

    Nomad's ``ScoreFitSpread``, the mirror of bin-pack: ``score = 10**free_cpu +
    10**free_mem - 2`` with the free fractions after placement, from 0 (full) to
    18 (empty). Higher is better. A node running many tasks has them in its
    allocation, so "fewest tasks" follows for tasks of similar size.
    """

    name = "spread"
    lower_is_better = False

    def score(self, spec: TaskSpec, candidates: Sequence[NodeFacts]) -> list[float]:
        return [10.0**c + 10.0**m - 2.0 for c, m in free_after(spec, candidates)]
