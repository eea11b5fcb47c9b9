"""The manager: keeps the desired state of the cluster and drives nodes towards it.

It holds every task and node in memory (the authority while it runs) and writes
each change through to the store (so a restarted manager loses nothing). Three
loops do the work:

* dispatch: places Pending tasks as soon as they arrive (woken by submissions,
  node joins and freed capacity; a slow timer is only the safety net);
* collect: every ``collect_interval`` asks each node for its metrics (and its tasks,
  unless they are watched), marks nodes that stopped answering as Down, and
  reconciles task states; in a large fleet the interval stretches (see pacing);
* watch, one per node: a blocking query for the node's tasks that the node answers
  as soon as one changes, so a started or crashed container is known at once rather
  than at the next collection; if a node cannot be watched, collection lists its tasks;
* join: keeps trying the statically configured worker addresses until they answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from cube.background import Supervisor, cancel_all, spawn
from cube.errors import (
    Conflict,
    CubeError,
    FieldError,
    InvalidSpec,
    NotFound,
    StoreUnavailable,
    Unavailable,
)
from cube.log import get_logger
from cube.manager.identity import check_claim, new_secret
from cube.manager.jobs import JobService
from cube.manager.lookup import find_task
from cube.manager.pacing import Pace, pace
from cube.manager.reconcile import gave_up, merge_report, needs_merge
from cube.manager.workers import WorkerClient
from cube.node import JoinAnswer, Node, NodeReport, NodeState
from cube.scheduler import Scheduler, allocate, allocate_all
from cube.store.base import Store
from cube.task.model import STOPPED_BY_USER, DesiredState, Task, TaskEvent
from cube.task.spec import KEEP_SECRETS, TaskRequest
from cube.task.state import TERMINAL, State

log = get_logger("cube.manager")

#: States in which a task holds resources on its node.
PLACED = frozenset({State.SCHEDULED, State.RUNNING})
#: Calls to nodes in flight at once, per collection pass and per dispatch pass (see
#: Manager.collect).
COLLECT_CONCURRENCY = 16
#: Task sends in flight at once (see Manager._send). Without a bound, a job pass of 500
#: placements queued 500 requests in the fleet's connection pool: each waited there past
#: its timeout, counted as the node being unreachable, and the node was marked down
#: (bench/jobs.py: 0 of 10,000 allocations ever ran on 1,000 simulated nodes).
SEND_CONCURRENCY = 32
#: The longest pause between two dispatch passes (see Manager._dispatch_loop).
MAX_DISPATCH_PAUSE = 0.5
#: Serialises the API's task lists straight from the manager's records.
_TASK = Task.__pydantic_serializer__
#: Left out of task lists (see Manager.tasks_json).
_NOT_LISTED = {"placement"}
#: How long a node holds a blocking query for its tasks when nothing changes. An idle
#: node answers at this rate, so a short wait costs the manager a request per node and
#: second: at 1,000 nodes, 1 s made the manager CPU-bound (bench/manager.py). A stopping
#: worker answers its queries at once (ChangeFeed.close); a node cut off holds one until
#: its timeout, while collection, which judges liveness, lists its tasks meanwhile.
WATCH_WAIT = 10.0
#: Every so often a watch asks for every task again, not only the changed ones.
WATCH_RESYNC = 30.0
#: Event histories asked of one node at once while reconciling.
HISTORY_CALLS = 16


def _now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime.fromtimestamp(0, UTC)


class Manager:
    def __init__(
        self,
        *,
        store: Store,
        scheduler: Scheduler,
        workers: WorkerClient | None = None,
        static_workers: Sequence[str] = (),
        static_token: str | None = None,
        collect_interval: float = 1.0,
        node_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.workers = workers or WorkerClient(timeout=max(2.0, collect_interval * 2))
        self.static_workers = list(static_workers)
        self.static_token = static_token
        self.collect_interval = collect_interval
        self.node_timeout = node_timeout
        #: The time between the starts of two collection passes: the interval in force (see
        #: pace), or longer when a pass overran it (see _collect_loop).
        self.collect_period = collect_interval
        self.tasks: dict[str, Task] = {t.id: t for t in store.list_tasks()}
        #: Node name -> IDs of the tasks whose ``node`` it is (kept by :meth:`_assign`): a
        #: complete report is checked against it, instead of against every task of the
        #: cluster (1,000 nodes x 10,000 tasks per collection pass, in bench/manager.py).
        #: (A dict as an ordered set: tasks move off a lost node in the order they came.)
        self._on_node: dict[str, dict[str, None]] = {}
        for task in self.tasks.values():
            if task.node is not None:
                self._on_node.setdefault(task.node, {})[task.id] = None
        self.nodes: dict[str, Node] = {n.name: n for n in store.list_nodes()}
        for node in self.nodes.values():
            if node.token:
                self.workers.credentials[node.address] = node.token
        self._dispatch_wake = asyncio.Event()
        # Placement of a task that fit nowhere is retried only once the cluster changed
        # (a node joined, capacity was freed...): each change bumps the generation.
        self._generation = 0
        self._tried: dict[str, int] = {}
        self._loops: list[asyncio.Task[None]] = []
        #: Runs the loops below, and starts one that crashed again (see GET /v1/health).
        self.loops = Supervisor("manager")
        self._background: set[asyncio.Task[Any]] = set()
        #: Task ID -> set when its send to a node ended. A stop waits for it: otherwise it can
        #: overtake the send, find nothing to stop, and the node starts the task after all.
        self._sending: dict[str, asyncio.Event] = {}
        #: Task ID -> the stop call in flight, so collection passes do not pile up more.
        self._stopping: dict[str, asyncio.Task[None]] = {}
        #: (node, task) of copies being stopped because the task is placed elsewhere.
        self._stopping_copies: set[tuple[str, str]] = set()
        #: (node, task) of copies a node stopped on its own (see gave_up): until the node
        #: reports a copy it runs, a stopped one is that copy, not news of a new placement.
        self._given_up: set[tuple[str, str]] = set()
        #: Node name -> its watch; the names of nodes whose watch currently works.
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._watched: set[str] = set()
        #: One reconciliation of a node at a time (its watch and collection may overlap).
        self._reconciling: dict[str, asyncio.Lock] = {}
        #: Task ID -> its JSON in task lists, until it changes (see tasks_json).
        self._listed: dict[str, bytes] = {}
        #: Node name -> its view with its allocation, until it changes (see _view).
        self._views: dict[str, Node] = {}
        #: Node name -> when its blocking query last answered (see _check_deadline).
        self._heard: dict[str, datetime] = {}
        #: Node name -> the timer that looks again at its deadline (see _check_deadline).
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        #: Collection: polls in flight at once, and the nodes they are polling.
        self._poll_slots = asyncio.Semaphore(COLLECT_CONCURRENCY)
        self._polling: set[str] = set()
        self._send_slots = asyncio.Semaphore(SEND_CONCURRENCY)
        #: Jobs and their allocations: they place their tasks through this manager.
        self.jobs = JobService(self)

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

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        started = _now()
        for node in self.nodes.values():
            # A restarted manager gives every known node a fresh deadline before calling it Down.
            node.last_seen = started
            self._node_changed(node.name)
        self.workers.node_timeout = self.pace.node_timeout
        self._loops = [
            self.loops.start("dispatch", self._dispatch_loop),
            self.loops.start("collect", self._collect_loop),
            *(
                self.loops.start(f"join {a}", functools.partial(self._join_loop, a))
                for a in self.static_workers
            ),
        ]
        for node in self.nodes.values():
            self._watch(node)
        self._dispatch_wake.set()
        self.jobs.start()
        log.info(
            "manager started",
            tasks=len(self.tasks),
            nodes=len(self.nodes),
            scheduler=self.scheduler.algorithm,
        )

    async def close(self) -> None:
        for timer in self._deadlines.values():
            timer.cancel()
        await self.jobs.close()
        await cancel_all([*self._loops, *self._watches.values(), *self._background])
        await self.workers.aclose()
        log.info("manager stopped")

    # --- tasks ---------------------------------------------------------------------------------
    def submit(self, request: TaskRequest) -> tuple[Task, bool]:
        """Accept a task as Pending and wake the dispatcher. Same ID and spec: a no-op."""
        spec = request.spec()
        if request.id is not None and (existing := self.tasks.get(request.id)) is not None:
            if existing.spec != spec:
                raise Conflict(f"task {request.id} exists with a different spec")
            return existing.model_copy(deep=True), False
        task = Task(spec=spec) if request.id is None else Task(id=request.id, spec=spec)
        # Saved first: a task the store refused (a full disk) must not be listed.
        self.store.save_task(task, [TaskEvent(state=State.PENDING, reason="submitted")])
        self.tasks[task.id] = task
        log.info("task submitted", task=task.id, name=spec.name)
        self._dispatch_wake.set()
        return task.model_copy(deep=True), True

    def resolve(self, ref: str) -> Task:
        """The task with this ID, name or unique ID prefix (see :mod:`cube.manager.lookup`)."""
        return find_task(self.tasks, ref)

    def get(self, task_id: str) -> Task:
        return self.resolve(task_id).model_copy(deep=True)

    def list_tasks(self, *, state: State | None = None, node: str | None = None) -> list[Task]:
        return [t.model_copy(deep=True) for t in self._select(state, node)]

    def tasks_json(self, *, state: State | None = None, node: str | None = None) -> bytes:
        """The tasks as ``GET /v1/tasks`` lists them: without their placement explanation
        (more than half of each task's JSON; ``GET /v1/tasks/{id}`` has it), like Nomad's
        list stubs.

        Each task's JSON is kept until the task changes (:meth:`_save` drops it), so a
        list of 10,000 mostly settled tasks is a join of cached bytes: serialising them
        all each time (after deep copies, at first) was most of the cost of the call.
        Nothing here awaits, so no record changes while the list is made.
        """
        listed = self._listed
        parts = []
        for task in self._select(state, node):
            part = listed.get(task.id)
            if part is None:
                part = listed[task.id] = _TASK.to_json(task, exclude=_NOT_LISTED)
            parts.append(part)
        if not parts:
            return b"[]"
        # The brackets go on the first and last parts: ``b"[" + joined + b"]"`` would copy
        # the whole list (7 MiB for 10,000 tasks) once more, a third of the call's time.
        parts[0] = b"[" + parts[0]
        parts[-1] += b"]"  # the same part as the first when there is one task
        return b",".join(parts)

    def _select(self, state: State | None, node: str | None) -> list[Task]:
        return [
            t
            for t in self.tasks.values()
            if (state is None or t.state is state) and (node is None or t.node == node)
        ]

    def events(self, task_id: str) -> list[TaskEvent]:
        return self.store.task_events(self.resolve(task_id).id)

    async def stop(self, task_id: str, *, reason: str = STOPPED_BY_USER) -> Task:
        """Stop a task in any state; returns once its node stopped it (or is unreachable).

        ``reason`` travels to the node and is recorded as the reason of the task's end."""
        task = self.resolve(task_id)
        task.desired, task.desired_reason = DesiredState.STOP, reason
        if task.state is State.PENDING:
            self._save(task, task.transition(State.COMPLETED, f"{reason} before placement"))
            return task.model_copy(deep=True)
        self._save(task)
        if (sending := self._sending.get(task.id)) is not None:
            await sending.wait()
        node = self.nodes.get(task.node or "")
        if node is not None:
            await asyncio.shield(self._stop_once(task, node))
        self._capacity_changed()
        return task.model_copy(deep=True)

    async def logs(self, task_id: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        task = self.resolve(task_id)
        node = self.nodes.get(task.node or "")
        if node is None:
            raise NotFound(f"task {task.id} has not been placed on a node yet ({task.reason})")
        async for chunk in self.workers.logs(node.address, task.id, tail=tail, follow=follow):
            yield chunk

    # --- nodes ---------------------------------------------------------------------------------
    async def register(
        self,
        name: str,
        address: str,
        token: str | None,
        *,
        secret: str | None = None,
        running: Sequence[str] = (),
    ) -> JoinAnswer:
        """Add (or update) a node, after checking that the name is the caller's to take
        (see :mod:`cube.manager.identity`) and that its API answers at ``address`` to
        ``token``: a worker can only join with a credential it really accepts.

        The answer carries a new node secret if one was issued, and the tasks placed on
        the node: a returning worker runs only those (see Worker.joined). ``running``: the
        tasks whose containers the worker found running; those moved off it and not yet
        placed elsewhere are taken back rather than started anew."""
        check_claim(self.nodes.get(name), address=address, secret=secret)
        previous = self.workers.credentials.get(address)
        self._remember(address, token)
        try:
            report = await self.workers.stats(address)
        except CubeError as exc:
            self._remember(address, previous)
            # The caller's input: an address nobody answers at is a 422 naming it.
            why = f"no worker answers here: {exc.message}"
            raise InvalidSpec([FieldError("address", why)]) from None
        if report.name != name:
            raise InvalidSpec(
                [FieldError("name", f"the worker at {address} is named {report.name!r}")]
            )
        # Checked again: another join under this name may have been accepted meanwhile.
        issue = check_claim(self.nodes.get(name), address=address, secret=secret)
        issued, digest = new_secret() if issue else (None, None)
        node = self._join(address, report, token=token, secret_hash=digest)
        taken = set()
        for task_id in running:
            task = self.tasks.get(task_id)
            if task is not None and self._may_take_back(task, node):
                self._take_back(task, node)
                taken.add(task_id)
        if taken:
            await self._merge_taken_back(node, taken)
        assigned = [t.id for t in self._tasks_on(name) if t.desired is DesiredState.RUN]
        return JoinAnswer(
            node=self._view(name),
            secret=issued,
            tasks=assigned,
            node_timeout=self.pace.node_timeout,
        )

    async def _merge_taken_back(self, node: Node, taken: set[str]) -> None:
        """Merge the node's copies of the tasks just taken back: the join names them only,
        and until the next report they would be Running without their container and
        ports. A node that does not answer now is merged with its next report."""
        try:
            copies = [c for c in await self.workers.tasks(node.address) if c.id in taken]
            async with self._reconciling.setdefault(node.name, asyncio.Lock()):
                await self._reconcile(node, copies, complete=False)
        except CubeError as exc:
            log.warning("merging tasks taken back failed", node=node.name, error=exc.message)

    def forget(self, task_id: str) -> None:
        """Delete a task that ended and has no container left (a purged job's): from the
        records, the lists, and the store, as ``nomad job stop -purge`` lets its garbage
        collector do. A task that may still run somewhere must be stopped first: a node
        that reports a task the manager does not know is left alone."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        if not task.is_terminal or task.container_id is not None:
            raise Conflict(f"task {task_id} has not stopped yet")
        with contextlib.suppress(NotFound):
            self.store.delete_task(task_id)
        self._assign(task, None)
        del self.tasks[task_id]
        self._listed.pop(task_id, None)
        self._tried.pop(task_id, None)

    def _remember(self, address: str, token: str | None) -> None:
        if token:
            self.workers.credentials[address] = token
        else:
            self.workers.credentials.pop(address, None)

    def get_node(self, name: str) -> Node:
        self._node(name)  # NotFound
        return self._view(name)

    def _node(self, name: str) -> Node:
        if (node := self.nodes.get(name)) is None:
            raise NotFound(f"node {name} not found")
        return node

    def drain(self, name: str) -> Node:
        """Take no new tasks on ``name`` and move its tasks to other nodes."""
        node = self._node(name)
        self._node_changed(name)
        node.drain = True
        if node.state is NodeState.READY:
            node.state = NodeState.DRAINING
        node.reason = "drained by operator"
        self._save_node(node)
        self.jobs.wake()
        for task_id in self._move_tasks_off(node, f"node {name} draining"):
            # The node answers: stop its copies now. Its blocking query reports only tasks
            # that change, and these do not until they are stopped.
            self._stop_copy(node, task_id)
        log.info("node draining", node=name)
        return self.get_node(name)

    def undrain(self, name: str) -> Node:
        """Let ``name`` take tasks again."""
        node = self._node(name)
        self._node_changed(name)
        node.drain = False
        if node.state is NodeState.DRAINING:
            node.state = NodeState.READY
        node.reason = ""
        self._save_node(node)
        self._capacity_changed()
        log.info("node undrained", node=name)
        return self.get_node(name)

    def list_nodes(self) -> list[Node]:
        return [self._view(name) for name in sorted(self.nodes)]

    def _view(self, name: str) -> Node:
        """The node as the scheduler and the API see it: its record, with the allocation of
        the tasks placed there by the manager's own records rather than the node's last
        report, so that two placements in one pass cannot share the last GiB.

        Kept until the node or one of its tasks changes (:meth:`_node_changed`): every
        dispatch pass and ``GET /v1/nodes`` asks for every node, and rebuilding 1,000
        of them each time was a third of a 1,000-node manager's CPU during a burst.
        Views are never modified, only replaced (:func:`allocate` returns a copy).
        """
        view = self._views.get(name)
        if view is None:
            specs = [t.spec for t in self._tasks_on(name) if t.state in PLACED]
            view = self._views[name] = allocate_all(self.nodes[name], specs)
        return view

    def _node_changed(self, name: str | None) -> None:
        """The node's record or one of its tasks changed: its view must be built again."""
        if name is not None:
            self._views.pop(name, None)

    # --- dispatch ------------------------------------------------------------------------------
    async def dispatch(self) -> None:
        """Place every Pending task that fits, oldest first, and send each to its node."""
        pending = [
            t
            for t in self.tasks.values()
            if t.state is State.PENDING
            and t.desired is DesiredState.RUN
            and t.alloc is None  # an allocation's tasks are placed together, by the job service
            and self._tried.get(t.id) != self._generation
        ]
        if not pending:
            return
        views = self.list_nodes()
        index = {n.name: i for i, n in enumerate(views)}
        sends: list[Coroutine[Any, Any, None]] = []
        gate = asyncio.Semaphore(COLLECT_CONCURRENCY)  # see collect(): same pool, same reason

        async def send(task: Task, node: Node) -> None:
            async with gate:
                await self._send(task, node)

        try:
            for task in pending:
                decision = self.scheduler.place(task.spec, views)
                task.placement = decision.model_dump(mode="json")
                if decision.node is None:
                    self._tried[task.id] = self._generation
                    if task.reason != decision.reason:
                        task.reason = decision.reason
                        self._save(task)
                    continue
                self._tried.pop(task.id, None)
                i = index[decision.node]
                views[i] = allocate(views[i], task.spec)
                self._assign(task, decision.node)
                task.node_events = 0  # a new placement: the node's history of it starts now
                self._save(task, task.transition(State.SCHEDULED, f"placed on {decision.node}"))
                self._sending.setdefault(task.id, asyncio.Event())  # before anything else runs
                sends.append(send(task, views[i]))
        finally:  # a save refused (a full disk) ends the pass: the tasks saved still go
            await asyncio.gather(*sends)

    def start_alloc_task(self, task: Task, node: Node, reason: str) -> None:
        """Record a task of a job's allocation as Scheduled on ``node`` and send it there.

        The job service placed the allocation; the task goes the way every task goes.
        """
        ref = task.alloc
        made = f"created for {ref.name} ({ref.id})" if ref else "created"
        self.tasks[task.id] = task
        self._assign(task, node.name)
        self._save(
            task,
            TaskEvent(state=State.PENDING, reason=made),
            task.transition(State.SCHEDULED, reason),
        )
        self._sending.setdefault(task.id, asyncio.Event())
        spawn(self._send(task, node), "send allocation task", keep=self._background)

    def _end_alloc_task(self, task: Task, reason: str) -> None:
        """A task of an allocation is not placed again on its own: it ends, and the job
        service replaces its allocation as a whole. It stays on its node, so that a copy
        the node still runs when it comes back is stopped (``desired: stop``)."""
        task.desired, task.desired_reason = DesiredState.STOP, reason
        if task.is_terminal:
            self._save(task)
        else:
            self._save(task, task.transition(State.FAILED, reason))
        self._capacity_changed()

    async def _send(self, task: Task, node: Node) -> None:
        sending = self._sending.setdefault(task.id, asyncio.Event())
        try:
            # The wait for a slot is the manager's, not the node's: outside the timeout.
            async with self._send_slots:
                await self._send_once(task, node)
        finally:
            sending.set()
            if self._sending.get(task.id) is sending:
                del self._sending[task.id]

    async def _send_once(self, task: Task, node: Node) -> None:
        alloc = None if task.alloc is None else task.alloc.model_dump()
        spec = task.spec.model_dump(context=KEEP_SECRETS)
        request = TaskRequest.model_validate({**spec, "id": task.id, "alloc": alloc})
        try:
            reported = await self.workers.run(node.address, request)
        except InvalidSpec as exc:  # the node refuses this spec: trying again will not help
            if task.state is State.SCHEDULED:
                self._save(task, task.transition(State.FAILED, f"node {node.name}: {exc.message}"))
            return
        except CubeError as exc:
            if isinstance(exc, Unavailable):
                self._node_unreachable(node.name, exc.message)
            if task.alloc is not None and task.state is State.SCHEDULED:
                self._end_alloc_task(task, f"could not start on {node.name}: {exc.message}")
            elif task.state is State.SCHEDULED and task.desired is DesiredState.RUN:
                self._unplace(task, f"could not start on {node.name}: {exc.message}")
                if isinstance(exc, StoreUnavailable):
                    # The node cannot save it (a full disk): placed again once the cluster
                    # changes (or by the dispatch's safety net), not in a loop against it.
                    self._tried[task.id] = self._generation
            return
        log.info("task sent", task=task.id, node=node.name)
        del reported  # its progress arrives with the next collection

    async def _dispatch_loop(self) -> None:
        self._dispatch_wake.set()  # a pass at once, also when started again after a crash
        while True:
            try:
                await asyncio.wait_for(self._dispatch_wake.wait(), 5.0)
            except TimeoutError:
                self._generation += 1  # the safety net: retry everything now and then
            self._dispatch_wake.clear()
            started = time.process_time()
            await self.dispatch()
            # Each pass starts with a view of every node (O(nodes + tasks)). In a burst of
            # submissions, each of which wakes the dispatcher, a pause as long as the CPU
            # the pass took lets the next ones gather, so a pass places many tasks and
            # dispatch takes at most about half the manager's time. (CPU, not wall time: a
            # pass that waited on a slow node cost nothing, and must not slow the next.)
            await asyncio.sleep(min(time.process_time() - started, MAX_DISPATCH_PAUSE))

    # --- collection and reconciliation ---------------------------------------------------------
    async def collect(self, *, over: float = 0.0) -> None:
        """One pass over every node: metrics, liveness, task states.

        The polls are spread evenly over ``over`` seconds (the collection loop gives the
        interval), so that a large fleet's polls come at a steady rate rather than as a
        burst that holds the API up; and at most :data:`COLLECT_CONCURRENCY` are in
        flight, because httpx's connection pool looks at every connection and queued
        request each time it hands one out. Returns once every poll has started: a node
        that does not answer is waited for by its own poll only (until the HTTP timeout),
        and skipped by the passes that come meanwhile, so every other node keeps its pace.
        """
        nodes = list(self.nodes.values())
        start, step = time.monotonic(), over / max(1, len(nodes))
        for i, node in enumerate(nodes):
            if node.name in self._polling:  # its last poll has not come back yet
                continue
            if (delay := start + i * step - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            await self._poll_slots.acquire()
            self._polling.add(node.name)
            spawn(self._poll(node), f"poll {node.name}", keep=self._background)

    async def _poll(self, node: Node) -> None:
        try:
            await self._collect_node(node)
        except CubeError as exc:  # one node's trouble must not end the pass (or loop)
            log.warning("collecting a node failed", node=node.name, error=exc.message)
        finally:
            self._polling.discard(node.name)
            self._poll_slots.release()

    async def _collect_node(self, node: Node) -> None:
        reported: list[Task] | None = None
        try:
            if node.name in self._watched:  # its tasks arrive through the watch as they change
                report = await self.workers.stats(node.address)
            else:
                report, reported = await asyncio.gather(
                    self.workers.stats(node.address), self.workers.tasks(node.address)
                )
        except CubeError as exc:
            # Its watch may hang until its timeout (a cut link): collection lists the node's
            # tasks again until the watch answers, so a node that is back is reconciled now.
            self._watched.discard(node.name)
            self._check_deadline(node, exc.message)
            return
        self._join(node.address, report)
        if reported is not None:
            async with self._reconciling.setdefault(node.name, asyncio.Lock()):
                await self._reconcile(node, reported)

    def _watch(self, node: Node) -> None:
        if node.name not in self._watches:
            self._watches[node.name] = self.loops.start(
                f"watch {node.name}", functools.partial(self._watch_loop, node.name)
            )

    async def _watch_loop(self, name: str) -> None:
        """Reconcile ``name``'s tasks as they change: a blocking query, like Nomad's."""
        since: str | None = None
        resync = 0.0
        while True:
            node = self.nodes[name]
            pace = self.pace
            if time.monotonic() >= resync:  # now and then every task, not only the changes
                since, resync = None, time.monotonic() + pace.resync
            try:
                changes = await self.workers.watch(node.address, since=since, wait=pace.watch_wait)
            except CubeError:  # collection lists its tasks meanwhile, and judges its liveness
                self._watched.discard(name)
                since = None
                await asyncio.sleep(max(1.0, self.collect_interval))
                continue
            if changes is None:  # a worker without blocking queries: collection it is
                self._watched.discard(name)
                return
            if node.state is NodeState.DOWN:
                # Collection brings it back first (taking back what it still runs), then
                # the next complete list is reconciled.
                self._watched.discard(name)
                since = None
                await asyncio.sleep(self.collect_interval)
                continue
            self._watched.add(name)
            self._heard[name] = _now()
            try:
                async with self._reconciling.setdefault(name, asyncio.Lock()):
                    await self._reconcile(
                        node, changes.tasks, complete=changes.complete, histories=changes.events
                    )
            except CubeError as exc:  # a history the node did not give: all again, next time
                log.warning("reconciling failed", node=name, error=exc.message)
                since = None
                await asyncio.sleep(self.collect_interval)
                continue
            since = changes.index

    async def _reconcile(
        self,
        node: Node,
        reported: list[Task],
        *,
        complete: bool = True,
        histories: dict[str, list[TaskEvent]] | None = None,
    ) -> None:
        """Bring the manager's tasks in line with what ``node`` reported about them.

        ``complete``: ``reported`` lists every task of the node, so a task it leaves out
        is one the node does not know (not merely one that did not change).
        ``histories``: the node's events of the reported tasks, if it sent them along.
        """
        seen: set[str] = set()
        if histories is None:
            histories = await self._histories(node, reported)
        for copy in reported:
            seen.add(copy.id)
            task = self.tasks.get(copy.id)
            if task is None:
                continue  # run on the node directly, not through the manager: not ours to judge
            if self._can_readopt(task, copy, node):
                self._take_back(task, node)
            key = (node.name, copy.id)
            if copy.desired is DesiredState.RUN:
                self._given_up.discard(key)
            elif (
                task.node == node.name
                and task.desired is DesiredState.RUN
                and (key in self._given_up or task.id in self._sending)
            ):
                continue  # the copy it gave up, in a report older than the task's new send
            if gave_up(task, copy, node.name):
                # Stopped by the node on its own (its manager was silent too long): place
                # it again, here or elsewhere.
                self._given_up.add(key)
                why = f"node {node.name} stopped it ({copy.reason})"
                if task.alloc is not None:  # only the job service places it again
                    self._end_alloc_task(task, f"{why}; its allocation is replaced")
                else:
                    self._unplace(task, f"{why}; rescheduling")
            if task.node != node.name:
                if not copy.is_terminal or copy.container_id:
                    self._stop_copy(node, copy.id)
                continue
            if needs_merge(task, copy):
                events = histories.get(task.id)
                if events is None:
                    events = await self.workers.events(node.address, task.id)
                added = merge_report(task, copy, events)
                self._save(task, *added)
                if task.state in TERMINAL:
                    self._capacity_changed()  # its resources are free again
            if task.desired is DesiredState.STOP and (not copy.is_terminal or copy.container_id):
                self._stop_once(task, node)
        if not complete:
            return
        for task in self._tasks_on(node.name):
            if (
                task.id not in seen
                and task.state in PLACED
                and task.desired is DesiredState.RUN
                and task.id not in self._sending  # not yet known: it is on its way
            ):
                log.info(
                    "node does not know its task; sending it again", task=task.id, node=node.name
                )
                await self._send(task, node)

    async def _histories(self, node: Node, reported: list[Task]) -> dict[str, list[TaskEvent]]:
        """The node's event histories of the reported tasks that will be merged, asked for
        all at once: one after the other, a burst of changes (a hundred tasks started
        together) would cost a round trip each. A history that could not be had is left
        out (asked for again when needed)."""
        wanted = []
        for copy in reported:
            task = self.tasks.get(copy.id)
            if task is not None and (
                (task.node == node.name and needs_merge(task, copy))
                or self._can_readopt(task, copy, node)
            ):
                wanted.append(copy.id)
        if not wanted:
            return {}
        limit = asyncio.Semaphore(HISTORY_CALLS)

        async def history(task_id: str) -> list[TaskEvent]:
            async with limit:
                return await self.workers.events(node.address, task_id)

        answers = await asyncio.gather(*(history(t) for t in wanted), return_exceptions=True)
        return {
            task_id: answer
            for task_id, answer in zip(wanted, answers, strict=True)
            if not isinstance(answer, BaseException)
        }

    def _stop_once(self, task: Task, node: Node) -> asyncio.Task[None]:
        """Stop ``task`` on ``node``, or join the stop call already in flight."""
        stopping = self._stopping.get(task.id)
        if stopping is None or stopping.done():
            stopping = spawn(self._stop_on_node(task, node), "node call", keep=self._background)
            self._stopping[task.id] = stopping

            def forget(done: asyncio.Task[None]) -> None:
                if self._stopping.get(task.id) is done:
                    del self._stopping[task.id]

            stopping.add_done_callback(forget)
        return stopping

    def _stop_copy(self, node: Node, task_id: str) -> None:
        """Stop the copy of a task that ``node`` still has though the task is placed
        elsewhere, with one call in flight per copy: every change the node reports in the
        meantime (one per blocking query) would otherwise send another."""
        key = (node.name, task_id)
        if key in self._stopping_copies:
            return
        log.warning("stopping a copy placed elsewhere", task=task_id, node=node.name)
        self._stopping_copies.add(key)
        call = spawn(
            self.workers.stop(node.address, task_id, wait=30.0), "node call", keep=self._background
        )
        call.add_done_callback(lambda _: self._stopping_copies.discard(key))

    async def _stop_on_node(self, task: Task, node: Node) -> None:
        try:
            reason = task.desired_reason or STOPPED_BY_USER
            wait = task.spec.stop_timeout + 20
            copy = await self.workers.stop(node.address, task.id, wait=wait, reason=reason)
            events = await self.workers.events(node.address, task.id)
        except NotFound:
            if task.state not in TERMINAL:  # never reached the node
                self._save(task, task.transition(State.COMPLETED, reason))
            return
        except CubeError as exc:
            task.reason = f"stop requested; node {node.name} did not answer: {exc.message}"
            self._save(task)
            return
        self._save(task, *merge_report(task, copy, events))

    async def _collect_loop(self) -> None:
        """A pass every collection interval (:attr:`pace`), its polls spread over it.

        A pass that could not start its polls within the interval (a busy machine: polls
        wait for a free slot, timers fire late) is followed by the next one at once, so
        the manager collects as fast as it can then, and no faster than the interval in
        force otherwise. :attr:`collect_period` is the time the last pass took to start
        every poll, or the interval if less.
        """
        while True:
            started = time.monotonic()
            interval = self.pace.collect
            await self.collect(over=interval)
            self.collect_period = max(interval, time.monotonic() - started)
            if self.collect_period > interval:
                log.debug("collection pass overran its interval", seconds=self.collect_period)
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))

    async def _join_loop(self, address: str) -> None:
        """Add a statically configured worker, retrying until it answers."""
        self._remember(address, self.static_token)
        while True:
            try:
                self._join(address, await self.workers.stats(address), token=self.static_token)
                return
            except CubeError as exc:
                log.warning("worker not answering yet", address=address, error=exc.message)
            await asyncio.sleep(max(1.0, self.collect_interval))

    # --- node bookkeeping ----------------------------------------------------------------------
    def _join(
        self,
        address: str,
        report: NodeReport,
        *,
        token: str | None = None,
        secret_hash: str | None = None,
    ) -> Node:
        """Record what a node reported (a join, or a collection pass with token None);
        ``secret_hash``: the digest of a node secret just issued to it."""
        node = self.nodes.get(report.name)
        is_new = node is None
        if node is None:
            node = Node(name=report.name, address=address)
            self.nodes[node.name] = node
            log.info("node joined", node=node.name, address=address)
            self._watch(node)
            self.workers.node_timeout = self.pace.node_timeout  # it grows with the fleet
        changed = is_new or (node.address, node.capacity, node.labels, node.allows) != (
            address,
            report.capacity,
            report.labels,
            report.allows,
        )
        # A port freed or taken on the machine: pending tasks that want it look again.
        in_use = set(report.ports_in_use)
        changed = changed or in_use != node.ports_in_use
        if token is not None and token != node.token:
            node.token, changed = token, True
        if secret_hash is not None:
            node.secret_hash, changed = secret_hash, True
        self._node_changed(node.name)
        node.address = address
        node.capacity = report.capacity
        node.labels = dict(report.labels)
        node.allows = list(report.allows)
        node.ports_in_use = in_use
        node.stats = report.stats
        node.last_seen = _now()
        if node.state is NodeState.DOWN:
            node.state = NodeState.DRAINING if node.drain else NodeState.READY
            node.reason, changed = "", True
            log.info("node is back", node=node.name)
        if changed:
            try:
                self._save_node(node)
            except StoreUnavailable:
                if is_new:  # not saved: not joined
                    del self.nodes[node.name]
                    if (watch := self._watches.pop(node.name, None)) is not None:
                        watch.cancel()
                raise
            self._capacity_changed()
        return node

    def _check_deadline(self, node: Node, error: str) -> None:
        """A node that did not answer: past the deadline it is Down and its tasks move.

        Silent since it last answered a poll or its blocking query: a poll that timed out
        on a busy node whose query still answers is no reason to move its tasks."""
        heard = max(node.last_seen or node.registered_at, self._heard.get(node.name, _EPOCH))
        silent = (_now() - heard).total_seconds()
        if silent < self.pace.node_timeout:
            # Look again when the deadline passes, not a poll later: the node is Down at
            # its deadline, as a Nomad client whose heartbeat TTL expires.
            if node.name not in self._deadlines:
                self._deadlines[node.name] = asyncio.get_running_loop().call_later(
                    self.pace.node_timeout - silent, self._deadline_passed, node.name, error
                )
            return
        if node.state is not NodeState.DOWN:
            self._mark_down(node, f"no answer for {silent:.0f}s: {error}")
        self._move_tasks_off(node, f"node {node.name} lost")

    def _deadline_passed(self, name: str, error: str) -> None:
        del self._deadlines[name]
        if (node := self.nodes.get(name)) is not None:
            try:
                self._check_deadline(node, error)  # answered meanwhile: a new deadline, or none
            except StoreUnavailable as exc:  # a timer's callback: nobody else would log it
                log.warning("cannot record a lost node", node=name, error=exc.message)

    def _move_tasks_off(self, node: Node, why: str) -> list[str]:
        """Send every task placed on ``node`` back to the scheduler (same ID, history kept).

        Returns the IDs of the tasks moved."""
        moved = []
        for task in self._tasks_on(node.name):
            if task.state in PLACED and task.desired is DesiredState.RUN:
                if task.alloc is not None:
                    self._end_alloc_task(task, f"{why}; its allocation is replaced")
                else:
                    self._unplace(task, f"{why}; rescheduling")
                moved.append(task.id)
        if moved:
            log.warning("tasks moved off node", node=node.name, tasks=len(moved), why=why)
        return moved

    def _assign(self, task: Task, node: str | None) -> None:
        """Set the node a task is placed on (None: none), and the index of tasks by node."""
        if task.node is not None:
            self._on_node.get(task.node, {}).pop(task.id, None)
        self._node_changed(task.node)
        self._node_changed(node)
        task.node = node
        if node is not None:
            self._on_node.setdefault(node, {})[task.id] = None

    def _tasks_on(self, node: str) -> list[Task]:
        """The tasks placed on ``node`` (a copy of the list: callers may move them off)."""
        return [self.tasks[task_id] for task_id in self._on_node.get(node, ())]

    def _unplace(self, task: Task, reason: str) -> None:
        """Back to Pending, off its node. The node's copy, if any, is stopped by reconciliation."""
        self._assign(task, None)
        task.container_id = None
        task.ports = []
        self._save(task, task.transition(State.PENDING, reason))
        self._capacity_changed()

    def _can_readopt(self, task: Task, copy: Task, node: Node) -> bool:
        """A task moved off a lost node that came back still running it, before it found
        another node: take the running copy back instead of stopping it and starting anew."""
        return (
            copy.state is State.RUNNING
            and copy.desired is DesiredState.RUN  # not a copy its node is stopping
            and self._may_take_back(task, node)
        )

    def _may_take_back(self, task: Task, node: Node) -> bool:
        """Whether ``task`` may go back to ``node``, which says it still runs it."""
        return (
            task.state is State.PENDING
            and task.desired is DesiredState.RUN
            and task.node is None
            and node.state is NodeState.READY
            # Not a copy already being stopped (seen before it ran): the stop would end
            # the task just taken back, Completed though it should run.
            and (node.name, task.id) not in self._stopping_copies
        )

    def _take_back(self, task: Task, node: Node) -> None:
        self._assign(task, node.name)
        reason = f"node {node.name} is back and still runs it"
        # Straight to Running: the node's events up to its Running may have been merged
        # before the node was lost, and would not be replayed.
        self._save(
            task, task.transition(State.SCHEDULED, reason), task.transition(State.RUNNING, reason)
        )

    def _capacity_changed(self) -> None:
        self._generation += 1
        self._dispatch_wake.set()
        self.jobs.wake()

    def _node_unreachable(self, name: str, error: str) -> None:
        """A failed call to a node: stop placing tasks there until it answers again."""
        node = self.nodes.get(name)
        if node is not None and node.state is NodeState.READY:
            self._mark_down(node, f"unreachable: {error}")

    def _mark_down(self, node: Node, reason: str) -> None:
        self._node_changed(node.name)
        node.state, node.reason = NodeState.DOWN, reason
        self._save_node(node)
        self.jobs.wake()
        log.warning("node down", node=node.name, reason=reason)

    # --- helpers -------------------------------------------------------------------------------
    def _save(self, task: Task, *events: TaskEvent) -> None:
        """Record a change of ``task`` (every change of a task is saved at once)."""
        self._listed.pop(task.id, None)
        self._node_changed(task.node)  # its state may have freed or taken resources there
        try:
            self.store.save_task(task, events)
        except StoreUnavailable:
            self._restore(task)
            raise
        if task.alloc is not None:
            self.jobs.task_changed(task)  # its allocation's status may change

    def _save_node(self, node: Node) -> None:
        """Record a change of ``node``; one the store refused is undone, as for tasks."""
        try:
            self.store.save_node(node)
        except StoreUnavailable:
            self._node_changed(node.name)
            with contextlib.suppress(NotFound):  # a new node: _join forgets it
                saved = self.store.get_node(node.name)
                for field in Node.model_fields:
                    setattr(node, field, getattr(saved, field))
            raise

    def _restore(self, task: Task) -> None:
        """Undo the changes of ``task`` that the store refused: the record goes back to
        what was saved last, so the API never shows a change that a restart would lose."""
        saved = self.store.get_task(task.id)
        if saved.node != task.node:
            self._assign(task, saved.node)
        for field in Task.model_fields:
            setattr(task, field, getattr(saved, field))
        self._listed.pop(task.id, None)
        self._node_changed(task.node)
