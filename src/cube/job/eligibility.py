"""Which nodes may run a job's group: up, not draining, in one of the job's datacenters,
and with the labels its constraints ask for.

Apart from :mod:`cube.job.reconcile` because more than the reconciler asks: a
deployment's progress counts the eligible nodes (:mod:`cube.job.deploy`), the manager
reads datacenters through :func:`datacenter_of`. Resources are the scheduler's affair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from cube.job.spec import DEFAULT_DATACENTER, GroupSpec, JobSpec, group_constraints
from cube.node import NodeState


class NodeView(Protocol):
    """What the reconciler reads of a node; :class:`cube.node.Node` is one."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> NodeState: ...

    @property
    def drain(self) -> bool: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


def datacenter_of(node: NodeView) -> str:
    """The node's datacenter: its ``datacenter`` attribute if it has one, else its label.

    A node that says nothing is in :data:`~cube.job.spec.DEFAULT_DATACENTER`, as in Nomad.
    """
    explicit = getattr(node, "datacenter", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    return node.labels.get("datacenter", DEFAULT_DATACENTER)


def ineligibility(node: NodeView, spec: JobSpec, group: GroupSpec) -> str | None:
    """Why ``node`` may not run the group, or None. (Resources are the scheduler's affair.)"""
    if node.state is NodeState.DOWN:
        return f"node {node.name} is down"
    if node.drain or node.state is NodeState.DRAINING:
        return f"node {node.name} is draining"
    dc = datacenter_of(node)
    if dc not in spec.datacenters:
        return (
            f"node {node.name} is in datacenter {dc}, the job runs in {', '.join(spec.datacenters)}"
        )
    for key, value in group_constraints(spec, group).items():
        have = node.labels.get(key)
        if have != value:
            has = f"has {key}={have}" if have is not None else f"has no {key!r} label"
            return f"node {node.name} {has}, the group needs {key}={value}"
    return None
