"""What the scheduler reads from a node, read once per node *version*.

Reading a field of a pydantic model costs about three times a slotted attribute
(``BaseModel`` defines ``__getattr__``, which turns off CPython's fast attribute
paths), and it was most of the cost of a placement: at 5,000 nodes a placement
examines about 50 nodes and scores 32, reading some ten fields of each. Yet
between two placements only one node changes: the one :func:`allocate` replaced
with a copy. So a :class:`NodeFacts` holds the fields feasibility and scoring use,
as plain slotted values, and a :class:`FactsCache` keeps one per position in the
node list until another node object appears there.

**The contract.** The scheduler treats a :class:`Node` as a value: to change a
node, put a new object in the list (:func:`allocate`, :func:`release` and
``model_copy`` return one). A node changed in place (``node.state = ...``) keeps
its old facts until it is replaced. The manager passes fresh node views to every
dispatch pass (``Manager.list_nodes``) and replaces each node it allocates on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cube.node import Node, NodeState


@dataclass(slots=True, eq=False)
class NodeFacts:
    """One version of a node as the scheduler sees it: plain values, read once.

    ``cpu`` and ``memory`` are capacities; ``free_*`` is capacity minus allocated;
    ``cpu_measured`` is ``stats.cpu_percent`` as a 0..1 fraction, ``None`` without stats.
    """

    node: Node
    name: str
    ready: bool
    labels: Mapping[str, str]
    allows: Sequence[str]
    used_ports: set[int]  # published by its tasks, or in use on its machine
    cpu: float
    memory: int
    cpu_allocated: float
    memory_allocated: int
    free_cpu: float
    free_memory: int
    free_disk: int
    cpu_measured: float | None

    @classmethod
    def of(cls, node: Node) -> NodeFacts:
        capacity, allocated, stats = node.capacity, node.allocated, node.stats
        used_ports, in_use = node.used_ports, node.ports_in_use
        cpu, memory = capacity.cpu, capacity.memory
        cpu_allocated, memory_allocated = allocated.cpu, allocated.memory
        # Positional arguments, in field order: keywords cost a third more here.
        return cls(
            node,
            node.name,
            node.state == NodeState.READY,
            node.labels,
            node.allows,
            used_ports | in_use if in_use else used_ports,
            cpu,
            memory,
            cpu_allocated,
            memory_allocated,
            cpu - cpu_allocated,
            memory - memory_allocated,
            capacity.disk - allocated.disk,
            None if stats is None else min(max(stats.cpu_percent / 100.0, 0.0), 1.0),
        )


class FactsCache:
    """The facts of the nodes of a node list, by position; at most one per position.

    :meth:`table` hands out the list itself so the feasibility loop can look a node
    up without a call per node; entry ``i`` is the facts of whatever node was at
    position ``i`` last, so compare ``facts.node is node`` before trusting it (the
    cache holds that node, so its identity cannot be reused by another object).
    """

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: list[NodeFacts | None] = []

    def table(self, nodes: Sequence[Node]) -> list[NodeFacts | None]:
        """The cache's entries for ``nodes``; all empty again when the node count changed."""
        if len(self._known) != len(nodes):
            self._known = [None] * len(nodes)
        return self._known
