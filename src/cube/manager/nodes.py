"""The manager's nodes: their records, saved through, and the views the scheduler reads.

:class:`NodeRegistry` owns every node record and the cache of node views (a node with
the allocation of the tasks placed there); it decides the intervals in force, which
grow with the fleet (:mod:`cube.manager.pacing`). It asks the task registry which tasks
a node holds, and publishes a node going Down through the callback it is given (the job
service replaces what was there).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from cube.errors import NotFound, StoreUnavailable
from cube.log import get_logger
from cube.manager.pacing import Pace, PollClock, node_timeout_for, pace
from cube.manager.registry import TaskRegistry
from cube.manager.workers import WorkerClient
from cube.node import Node, NodeState
from cube.scheduler import allocate_all
from cube.store.base import Store
from cube.task.state import State

log = get_logger("cube.manager")

#: States in which a task holds resources on its node.
PLACED = frozenset({State.SCHEDULED, State.RUNNING})
#: How long a node holds a blocking query for its tasks when nothing changes. An idle
#: node answers at this rate, so a short wait costs the manager a request per node and
#: second: at 1,000 nodes, 1 s made the manager CPU-bound (bench/manager.py). A stopping
#: worker answers its queries at once (ChangeFeed.close); a node cut off holds one until
#: its timeout, while collection, which judges liveness, lists its tasks meanwhile.
WATCH_WAIT = 10.0
#: Every so often a watch asks for every task again, not only the changed ones.
WATCH_RESYNC = 30.0


class NodeRegistry:
    """Every node of the cluster, by name, and its view with its allocation."""

    def __init__(
        self,
        store: Store,
        tasks: TaskRegistry,
        workers: WorkerClient,
        *,
        collect_interval: float,
        node_timeout: float,
        went_down: Callable[[], None],
    ) -> None:
        self.store = store
        self.registry = tasks
        self.workers = workers
        self.collect_interval = collect_interval
        self.node_timeout = node_timeout
        self._went_down = went_down
        self.nodes: dict[str, Node] = {n.name: n for n in store.list_nodes()}
        for node in self.nodes.values():
            if node.token:
                self.workers.credentials[node.address] = node.token
        #: Node name -> its view with its allocation, until it changes (see view).
        self._views: dict[str, Node] = {}
        #: How fast collection really goes round the fleet (told by the collector).
        self.polls = PollClock()

    @property
    def pace(self) -> Pace:
        """The intervals in force: the configured ones, stretched for a large fleet."""
        return pace(
            len(self.nodes),
            collect_interval=self.collect_interval,
            node_timeout=self.node_timeout,
            watch_wait=WATCH_WAIT,
            resync=WATCH_RESYNC,
        )

    def node_timeout_in_force(self) -> float:
        """Seconds of silence after which a node is down, now: the pace's timeout, or
        more while collection goes round the fleet slower than the pace says (see
        :mod:`cube.manager.pacing`). It is also what every call tells the workers from
        now on (their disconnect window), so that the two deadlines stay one."""
        period = self.polls.period(
            time.monotonic(), nodes=len(self.nodes), interval=self.pace.collect
        )
        timeout = node_timeout_for(
            period, collect_interval=self.collect_interval, node_timeout=self.node_timeout
        )
        self.workers.node_timeout = timeout
        return timeout

    def add(self, node: Node) -> None:
        """A node joining: known from now on (saved by the caller, or forgotten)."""
        self.nodes[node.name] = node

    def forget(self, name: str) -> None:
        """A node whose join the store refused: not saved, not joined."""
        self.nodes.pop(name, None)
        self.node_changed(name)

    def remember(self, address: str, token: str | None) -> None:
        if token:
            self.workers.credentials[address] = token
        else:
            self.workers.credentials.pop(address, None)

    def get_node(self, name: str) -> Node:
        self.node(name)  # NotFound
        return self.view(name)

    def node(self, name: str) -> Node:
        if (node := self.nodes.get(name)) is None:
            raise NotFound(f"node {name} not found")
        return node

    def list_nodes(self) -> list[Node]:
        return [self.view(name) for name in sorted(self.nodes)]

    def view(self, name: str) -> Node:
        """The node as the scheduler and the API see it: its record, with the allocation of
        the tasks placed there by the manager's own records rather than the node's last
        report, so that two placements in one pass cannot share the last GiB.

        Kept until the node or one of its tasks changes (:meth:`node_changed`): every
        dispatch pass and ``GET /v1/nodes`` asks for every node, and rebuilding 1,000
        of them each time was a third of a 1,000-node manager's CPU during a burst.
        Views are never modified, only replaced (:func:`allocate` returns a copy).
        """
        view = self._views.get(name)
        if view is None:
            specs = [t.spec for t in self.registry.tasks_on(name) if t.state in PLACED]
            view = self._views[name] = allocate_all(self.nodes[name], specs)
        return view

    def node_changed(self, name: str | None) -> None:
        """The node's record or one of its tasks changed: its view must be built again."""
        if name is not None:
            self._views.pop(name, None)

    def mark_down(self, node: Node, reason: str) -> None:
        self.node_changed(node.name)
        node.state, node.reason = NodeState.DOWN, reason
        self.save_node(node)
        self._went_down()
        log.warning("node down", node=node.name, reason=reason)

    def save_node(self, node: Node) -> None:
        """Record a change of ``node``; one the store refused is undone, as for tasks."""
        try:
            self.store.save_node(node)
        except StoreUnavailable:
            self.node_changed(node.name)
            with contextlib.suppress(NotFound):  # a new node: Membership.join forgets it
                saved = self.store.get_node(node.name)
                for field in Node.model_fields:
                    setattr(node, field, getattr(saved, field))
            raise
