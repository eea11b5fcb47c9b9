"""One supervisor coroutine per task on a worker, like Nomad's task runner.

The runner owns its :class:`~cube.task.Task` object: it is the only code that
changes the task's state on this node, and it saves every change to the store.
Its loop is level-triggered: each pass looks at the task (desired state, current
state) and at the container, and takes the one step that brings them closer.
Anything that might have changed the container — a Docker ``die`` event, the
worker's periodic listing, a stop request — just wakes the runner up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from cube.background import wait_event
from cube.errors import CubeError, RuntimeUnavailable
from cube.log import get_logger
from cube.metrics.worker import WorkerTelemetry
from cube.runtime.base import (
    LABEL_TASK_ID,
    ContainerInfo,
    ContainerRuntime,
    worker_selector,
)
from cube.store.base import Store
from cube.task.model import STOPPED_BY_USER, DesiredState, Health, Task
from cube.task.restart import decide_restart, ended_by_engine
from cube.task.spec import HealthCheck, RestartPolicyName
from cube.task.state import TERMINAL, State
from cube.units import format_size
from cube.worker.container import Launch, container_config, run_on
from cube.worker.engine import EngineWatch
from cube.worker.health import HealthTracker, Prober, Verdict, probe

log = get_logger("cube.worker")

#: How long to wait before retrying when the container engine does not answer.
ENGINE_RETRY = 1.0
#: How the reason of a container stopped for failing its health check begins.
UNHEALTHY = "unhealthy: "


class TaskRunner:
    def __init__(
        self,
        task: Task,
        *,
        node: str,
        runtime: ContainerRuntime,
        store: Store,
        prober: Prober = probe,
        on_change: Callable[[str], None] | None = None,
        fresh: bool = False,
        starts: asyncio.Semaphore | None = None,
        engine: EngineWatch | None = None,
        launch: Launch | None = None,
        telemetry: WorkerTelemetry | None = None,
    ) -> None:
        self.task = task
        self.node = node
        self.runtime = runtime
        self.store = store
        self.prober = prober
        #: Called with the task's ID after every change is saved (the worker's change feed).
        self.on_change = on_change
        #: The task is new on this node: no container of it can exist before its first start.
        self._fresh = fresh
        #: Turns to create and start a container, shared by the worker's runners.
        self._starts = starts or asyncio.Semaphore(1)
        #: How a container is created and started: an allocation's tasks start theirs on
        #: its network (:meth:`cube.worker.alloc_runner.AllocRunner.launcher`).
        self._launch: Launch = launch or run_on(runtime)
        #: What the engine said about the container this runner just started (see _supervise).
        self._started: ContainerInfo | None = None
        #: The worker's record of engine outages, asked before a failure is counted.
        self.engine = engine or EngineWatch()
        #: How and when (Unix time) the last attempt ended: the reason of its Failed or
        #: Completed event, and the container's end or the refusal of its start.
        self._ended: tuple[str, float] | None = None
        self._wake = asyncio.Event()
        self._health: HealthTracker | None = None
        self.done = asyncio.Event()
        #: Recorded as the reason of the task's end when it is stopped.
        self.stop_reason = task.desired_reason or STOPPED_BY_USER
        #: The worker's metrics hooks (health-check failures, start durations).
        self.telemetry = telemetry or WorkerTelemetry(None, name=node)

    def notify(self) -> None:
        """Something may have changed: look again."""
        self._wake.set()

    @property
    def holds_resources(self) -> bool:
        """Whether the node should count this task's resources as allocated."""
        return self.task.desired is DesiredState.RUN and not self.done.is_set()

    # --- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while await self._step():
                pass
        finally:
            self.done.set()

    async def _step(self) -> bool:
        """Take one step towards the desired state. False when there is nothing left to do."""
        task = self.task
        try:
            if task.desired is DesiredState.STOP:
                await self._stop()
                return False
            if task.state is State.PENDING:
                self._move(State.SCHEDULED, f"accepted by node {self.node}")
            elif task.state is State.SCHEDULED and task.container_id is None:
                await self._start()
            elif task.state in (State.SCHEDULED, State.RUNNING):
                await self._supervise()  # Scheduled with a container: waiting to be healthy
            else:
                return await self._maybe_restart()
        except RuntimeUnavailable as exc:
            self.engine.lost()
            log.warning("container engine unavailable, retrying", task=task.id, error=exc.message)
            await self._sleep(ENGINE_RETRY)
        return True

    # --- steps ---------------------------------------------------------------------------------
    async def _start(self) -> None:
        task = self.task
        if self._fresh:
            self._fresh = False  # only the first attempt: a failed one may leave a container
        else:
            await self._remove_leftovers()
        task.container_id = None

        def progress(message: str) -> None:
            log.info(message, task=task.id, node=self.node)

        config = container_config(task, self.node)
        try:
            # Only the pull is cut short by a stop: a create cancelled mid-request could
            # still complete inside the engine and leave a container nobody recorded.
            pulled = await self._unless_stopped(
                self.runtime.ensure_image(config.image, on_progress=progress)
            )
            if not pulled:
                return  # stopped while pulling: the next step ends the task
            async with self._starts:
                if task.desired is DesiredState.STOP:
                    return  # stopped while waiting for its turn: the next step ends the task
                # From here on an exit of the new container wakes this runner, even before
                # its ID is recorded (loops.notify_container): _supervise then asks again.
                self._wake.clear()
                launched = time.monotonic()
                info = await self._launch(config, progress)
                self.telemetry.container_started(time.monotonic() - launched)
        except RuntimeUnavailable:
            raise  # not the task's failure: _step retries once the engine answers
        except CubeError as exc:  # refused, or its image or container vanished meanwhile (404)
            self._move(State.FAILED, f"container did not start: {exc.message}")
            return
        except Exception as exc:  # an answer the runtime did not expect: still a failed start
            log.error("starting a container failed", exc=exc, task=task.id, node=self.node)
            self._move(State.FAILED, f"container did not start: {exc!r}")
            return
        task.container_id = info.id
        task.ports = info.ports
        self._started = info if info.running else None
        self._health = None
        task.health = Health.UNKNOWN
        if task.spec.health is None:
            self._move(State.RUNNING, f"container {info.id[:12]} started")
        else:
            task.reason = f"container {info.id[:12]} started; waiting for its health check"
            self._save()

    async def _supervise(self) -> None:
        """Watch a started container: record how it ends, and probe it if it has a check."""
        task = self.task
        info: ContainerInfo | None
        started, self._started = self._started, None
        if started is not None and started.id == task.container_id and not self._wake.is_set():
            # Started a moment ago and nothing has woken us since: the engine's answer to the
            # start still holds, and asking again would cost every start one more call.
            info = started
        else:
            self._wake.clear()  # clear *before* looking, so an exit right after is not missed
            info = await self.runtime.inspect(task.container_id) if task.container_id else None
        if info is None:
            self._move(State.FAILED, "container disappeared")
        elif not info.running:
            self._record_exit(info)
        elif task.spec.health is None:
            if task.state is State.SCHEDULED:  # adopted before it was recorded as Running
                self._move(State.RUNNING, f"container {info.id[:12]} running")
            await self._wake.wait()
        else:
            await self._check_health(task.spec.health, info)

    async def _check_health(self, check: HealthCheck, info: ContainerInfo) -> None:
        """Sleep one interval (the first probe comes sooner), probe, act on the verdict."""
        task = self.task
        if self._health is None:
            started = info.started_at.timestamp() if info.started_at else time.time()
            self._health = HealthTracker(check, started=started)
        waiting = task.state is State.SCHEDULED
        if await self._wait(min(check.interval, 1.0) if waiting else check.interval):
            return  # woken up: look at the container again first
        result = await self.prober(check, info.ip or "127.0.0.1")
        verdict = self._health.record(result.ok, now=time.time())
        if not result.ok:
            self.telemetry.health_check_failed(task)
        if verdict is Verdict.HEALTHY:
            if task.state is State.SCHEDULED:
                task.health = Health.HEALTHY
                self._move(State.RUNNING, f"healthy ({result.detail})")
            elif task.health is not Health.HEALTHY:
                task.health = Health.HEALTHY
                self._save()
        elif verdict is Verdict.UNHEALTHY:
            task.health = Health.UNHEALTHY
            failures = self._health.failures
            await self.runtime.stop(info.id, grace=task.spec.stop_timeout)
            ended = await self.runtime.inspect(info.id)
            self._move(
                State.FAILED,
                f"{UNHEALTHY}{failures} checks failed in a row, last: {result.detail}",
                exit_code=ended.exit_code if ended else None,
            )
        elif verdict is Verdict.FAILING and task.health is not Health.UNHEALTHY:
            task.health = Health.UNHEALTHY
            task.reason = f"health check failing ({self._health.failures}): {result.detail}"
            self._save()

    def _record_exit(self, info: ContainerInfo) -> None:
        code = info.exit_code
        at = info.finished_at.timestamp() if info.finished_at else None
        if info.oom_killed:
            memory = format_size(self.task.spec.resources.memory)
            self._move(
                State.FAILED, f"killed: out of memory (limit {memory})", exit_code=code, at=at
            )
        elif code == 0:
            self._move(State.COMPLETED, "exited with code 0", exit_code=0, at=at)
        else:
            detail = f": {info.error}" if info.error else ""
            self._move(State.FAILED, f"exited with code {code}{detail}", exit_code=code, at=at)

    async def _maybe_restart(self) -> bool:
        task = self.task
        policy = task.spec.restart
        how, ended_at = self._ending()
        # Stopped for failing its check, not a container that merely ended while failing.
        unhealthy = how.startswith(UNHEALTHY)
        by_engine = False
        # A container this worker stopped for failing its check did not end by the engine:
        # no ping. (It also kept an await between the Failed state and the decision's
        # reason, so that `cube run --wait` could end on "unhealthy" before "gave up".)
        if policy.policy is not RestartPolicyName.NEVER and not unhealthy:
            engine = await self.engine.facts(self.runtime)
            by_engine = ended_by_engine(engine, ended_at=ended_at)
        decision = decide_restart(
            policy,
            exit_code=task.exit_code,
            restarts_so_far=task.restarts,
            cause=how,
            unhealthy=unhealthy,
            by_engine=by_engine,
        )
        if not decision.restart:
            if policy.policy is not RestartPolicyName.NEVER:
                task.reason = decision.reason  # say why it stays down: "gave up after 2 of 2"
                self._save()
            log.info(
                "task finished",
                task=task.id,
                node=self.node,
                state=task.state.value,
                reason=decision.reason,
            )
            return False
        ended = task.reason
        task.reason = decision.reason
        self._save()
        await self._sleep(decision.delay)
        if by_engine:
            await self._until_engine_answers()  # a start now would only be refused again
        if task.desired is DesiredState.STOP:
            # Take back the restart just announced ("restart 1 of 2 in 5s"): it will not come.
            task.reason = f"{ended}; restart cancelled: stopped by user"
            return True
        if decision.counted:
            task.restarts += 1
        task.container_id = None  # the next start replaces the old container
        self._move(State.SCHEDULED, decision.reason.replace(f" in {decision.delay:g}s", ""))
        return True

    def _ending(self) -> tuple[str, float | None]:
        """How and when the last attempt ended, in the words of its event ("container did
        not start: port is already allocated"); from the store if this runner is new."""
        if self._ended is not None:
            return self._ended
        for event in reversed(self.store.task_events(self.task.id)):
            if event.state in TERMINAL:
                return event.reason, event.time.timestamp()
        return "", None

    async def _until_engine_answers(self) -> None:
        while self.task.desired is DesiredState.RUN:
            if (await self.engine.facts(self.runtime)).answering:
                return
            await self._sleep(ENGINE_RETRY)

    async def _stop(self) -> None:
        task = self.task
        await self._remove_leftovers(keep=task.container_id)
        exit_code = task.exit_code
        if task.container_id:
            await self.runtime.stop(task.container_id, grace=task.spec.stop_timeout)
            info = await self.runtime.inspect(task.container_id)
            if info is not None and task.state is State.RUNNING:
                exit_code = info.exit_code
            await self.runtime.remove(task.container_id)
            log.info(
                "container removed", task=task.id, node=self.node, container=task.container_id[:12]
            )
            task.container_id = None
        if task.state in TERMINAL:  # already ended: keep its true final state
            self._save()
        else:
            self._move(State.COMPLETED, self.stop_reason, exit_code=exit_code)

    # --- helpers -------------------------------------------------------------------------------
    async def _remove_leftovers(self, *, keep: str | None = None) -> None:
        """Remove this task's containers other than ``keep``, found by label even if never
        recorded (a crash between create and save, a start cut short by a stop). Only this
        worker's: another worker on the same engine may still run its own copy."""
        selector = {**worker_selector(self.node), LABEL_TASK_ID: self.task.id}
        for old in await self.runtime.list(selector):
            if old.id != keep:
                await self.runtime.remove(old.id)

    async def _unless_stopped(self, work: Awaitable[None]) -> bool:
        """Await ``work``, but cancel it and return False as soon as a stop is requested:
        a pull of a large (or unreachable) image must not hold a stop up for minutes."""
        job = asyncio.ensure_future(work)
        while not job.done():
            if self.task.desired is DesiredState.STOP:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
                return False
            self._wake.clear()
            waker = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({job, waker}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
        job.result()  # raises what the work raised
        return True

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early for a stop request (other wake-ups do not cut it short)."""
        deadline = time.monotonic() + seconds
        while self.task.desired is DesiredState.RUN and (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            await self._wait(left)

    async def _wait(self, seconds: float) -> bool:
        """Wait for a wake-up at most ``seconds``; True if woken."""
        return await wait_event(self._wake, seconds)

    def _move(
        self, target: State, reason: str, *, exit_code: int | None = None, at: float | None = None
    ) -> None:
        """Change state; ``at``: when a container ended, if the engine said (else now)."""
        task = self.task
        task.node = self.node
        event = task.transition(target, reason, exit_code=exit_code)
        if target in TERMINAL:
            self._ended = (reason, at or event.time.timestamp())
        self.store.save_task(task, [event])
        self._changed()
        level = log.warning if target is State.FAILED else log.info
        level(f"task {target.value}", task=task.id, name=task.name, node=self.node, reason=reason)

    def _save(self) -> None:
        self.store.save_task(self.task)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.task.id)


def needs_runner(task: Task) -> bool:
    """Whether a task found in the store at start-up still needs supervision."""
    return not (
        task.state in TERMINAL and task.desired is DesiredState.STOP and not task.container_id
    )
