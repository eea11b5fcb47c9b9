"""The node views a job pass places on, updated in place: nothing here is O(nodes) per placement.

A placement used to cost O(nodes) before the scheduler even looked at a node: the list of
nodes in the job's datacenters, the list of nodes without the job, and a new list of
views with the one node allocated, each built anew (bench/jobs.py, py-spy: most of the
job pass at 1,000 nodes). :class:`PassViews` keeps, for one pass:

* every node's view in name order (what :meth:`cube.scheduler.Scheduler.place` wants),
  with each node's position, so that a placement replaces one entry;
* each node's datacenter, read once (a pydantic read per node per placement was a
  quarter of the manager's CPU at 300 nodes);
* for each set of datacenters a job asks for, the list of its nodes, kept up to date
  the same way (when every node is in them, the full list itself).

The job's anti-affinity (nodes that run it already come last) is a set the scheduler
passes over (``skip``), not another list. Views are replaced, never changed: the
scheduler's facts cache relies on it (:mod:`cube.scheduler.facts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from cube.job.eligibility import datacenter_of
from cube.job.spec import DEFAULT_DATACENTER
from cube.node import Node


def _datacenter(node: Node) -> str:
    """:func:`datacenter_of` for a :class:`Node`, which says its datacenter by a label: read
    directly, as ``getattr(node, "datacenter", None)`` raises inside pydantic first (50 ms
    per pass at 5,000 nodes)."""
    if "datacenter" in Node.model_fields:  # pragma: no cover - if Node ever gets the field
        return datacenter_of(node)
    return node.labels.get("datacenter", DEFAULT_DATACENTER)


class PassViews(Mapping[str, Node]):
    """Node views by name, in name order, and by datacenter; see the module docstring."""

    def __init__(self, views: list[Node], datacenters: Mapping[str, str] | None = None) -> None:
        """``views``: the manager's, sorted by name (the list is taken over and changed);
        ``datacenters``: node name -> datacenter already known (read from the views if not)."""
        known = datacenters or {}
        self.nodes = views
        self._at = {v.name: i for i, v in enumerate(views)}
        self._datacenter = {
            name: known[name] if name in known else _datacenter(views[i])
            for name, i in self._at.items()
        }
        self._every_dc = frozenset(self._datacenter.values())
        self._subsets: dict[frozenset[str], tuple[list[Node], dict[str, int]]] = {}

    def refreshed(self, views: list[Node]) -> PassViews:
        """The same pass on fresh views (after a pause, when others may have placed too)."""
        return PassViews(views, self._datacenter)

    # --- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self.nodes[self._at[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)

    # --- what placements read and change ------------------------------------------------------
    def in_datacenters(self, datacenters: Iterable[str]) -> list[Node]:
        """The views of the nodes in one of ``datacenters``, in name order (do not change it)."""
        wanted = frozenset(datacenters)
        if self._every_dc <= wanted:
            return self.nodes
        subset = self._subsets.get(wanted)
        if subset is None:
            nodes = [v for v in self.nodes if self._datacenter[v.name] in wanted]
            subset = self._subsets[wanted] = (nodes, {v.name: i for i, v in enumerate(nodes)})
        return subset[0]

    def replace(self, node: Node) -> None:
        """Put a new view of a node in place of its old one, in every list it is in."""
        self.nodes[self._at[node.name]] = node
        for nodes, at in self._subsets.values():
            if (i := at.get(node.name)) is not None:
                nodes[i] = node

    def datacenter(self, name: str) -> str:
        return self._datacenter[name]
