"""The worker agent's logic on the in-memory FakeRuntime and MemoryStore: no Docker, no HTTP.

Runners, restart policies, stops in every state, resource reports, adoption of
containers after a worker restart, and an engine outage, each in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from cube import background
from cube.errors import Conflict, NotFound, RuntimeUnavailable, StoreFull
from cube.node import Node, Resources
from cube.protocol import JoinAnswer
from cube.runtime.base import LABEL_ALLOC_ID, LABEL_TASK_ID
from cube.runtime.fake import FakeRuntime
from cube.store.memory import MemoryStore
from cube.task.model import DesiredState, Task
from cube.task.spec import HIDDEN, AllocRef, RestartPolicy, TaskRequest
from cube.task.state import State
from cube.worker import runner as runner_module
from cube.worker.agent import Worker
from cube.worker.api import create_app
from cube.worker.authority import announced_timeout, should_stop_tasks
from cube.worker.container import container_config
from tests.support.waiting import wait_until
from tests.support.worker import FullStore, request, restart

GiB = 1024**3
MiB = 1024**2

#: A restart delay no test waits for: the task sits in Failed, waiting to restart.
LONG_DELAY = 60.0

MakeWorker = Callable[..., Awaitable[Worker]]


def in_state(
    worker: Worker, task_id: str, state: State, *, reason: str = ""
) -> Callable[[], Task | None]:
    """A predicate: the task, once it is in ``state`` with ``reason`` in its reason."""

    def check() -> Task | None:
        task = worker.get(task_id)
        return task if task.state is state and reason in task.reason else None

    return check


async def running(worker: Worker, task_id: str, *, restarts: int = 0) -> Task:
    """Wait until the task runs (after ``restarts`` restarts) and return it."""

    def check() -> Task | None:
        task = worker.get(task_id)
        ok = task.state is State.RUNNING and task.restarts == restarts and task.container_id
        return task if ok else None

    return await wait_until(check)


async def finished(worker: Worker, task_id: str) -> Task:
    """Wait until no runner supervises the task any more, and return it."""
    await wait_until(lambda: task_id not in worker.runners)
    return worker.get(task_id)


def container_of(task: Task) -> str:
    assert task.container_id is not None, f"task {task.id} has no container ({task.state})"
    return task.container_id


def states(worker: Worker, task_id: str) -> list[State]:
    return [event.state for event in worker.events(task_id)]


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def make_worker(runtime: FakeRuntime, store: MemoryStore) -> AsyncIterator[MakeWorker]:
    """Factory: start worker "w1", on the shared runtime and store by default; all closed after."""
    started: list[Worker] = []

    async def make(*, store: MemoryStore = store, **options: Any) -> Worker:
        worker = Worker(
            name="w1",
            runtime=runtime,
            store=store,
            capacity=Resources(cpu=4, memory=4 * GiB),
            poll_interval=0.05,
            **options,
        )
        await worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.close()
    await runtime.close()


@pytest.fixture
async def worker(make_worker: MakeWorker) -> Worker:
    return await make_worker()


# --- running and restarting ---------------------------------------------------------------------
async def test_submit_runs_the_task_in_a_container(worker: Worker, runtime: FakeRuntime) -> None:
    task, created = worker.submit(request())
    assert created

    running_task = await running(worker, task.id)

    assert running_task.node == "w1"
    assert [c.id for c in runtime.running()] == [running_task.container_id]
    labels = runtime.containers[container_of(running_task)].info.labels
    assert labels["cube.task-id"] == task.id
    assert labels["cube.worker"] == "w1"
    assert states(worker, task.id) == [State.PENDING, State.SCHEDULED, State.RUNNING]


async def test_on_failure_restarts_exactly_max_attempts_then_gives_up(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request(restart=restart("on-failure", max_attempts=2)))
    containers = [container_of(await running(worker, task.id))]

    for n in (1, 2):
        runtime.crash(containers[-1], 3)
        containers.append(container_of(await running(worker, task.id, restarts=n)))
    runtime.crash(containers[-1], 3)
    final = await finished(worker, task.id)

    assert len(set(containers)) == 3  # a new container for each attempt
    assert final.state is State.FAILED
    assert final.restarts == 2
    assert final.exit_code == 3
    assert final.reason == "exited with code 3; gave up after 2 of 2 restarts"
    events = worker.events(task.id)
    assert [e.exit_code for e in events if e.state is State.FAILED] == [3, 3, 3]
    assert [e.reason for e in events if e.state is State.SCHEDULED][1:] == [
        "exited with code 3; restart 1 of 2 (on-failure)",
        "exited with code 3; restart 2 of 2 (on-failure)",
    ]
    # earlier attempts' containers are removed; the last one is kept for its logs
    assert list(runtime.containers) == [containers[-1]]


async def test_always_restarts_after_a_clean_exit(worker: Worker, runtime: FakeRuntime) -> None:
    task, _ = worker.submit(request(restart=restart("always")))
    first = await running(worker, task.id)

    runtime.crash(container_of(first), 0)
    second = await running(worker, task.id, restarts=1)

    assert second.container_id != first.container_id
    events = worker.events(task.id)
    assert [(e.state, e.exit_code) for e in events[3:]] == [
        (State.COMPLETED, 0),
        (State.SCHEDULED, None),
        (State.RUNNING, None),
    ]
    assert events[4].reason == "exited with code 0; restart 1 (always)"


async def test_never_fails_with_the_exit_code_and_does_not_restart(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request())
    container = container_of(await running(worker, task.id))

    runtime.crash(container, 3)
    final = await finished(worker, task.id)

    assert final.state is State.FAILED
    assert final.exit_code == 3
    assert final.reason == "exited with code 3"
    assert final.restarts == 0
    assert final.container_id == container  # kept, not replaced
    assert runtime.running() == []
    assert states(worker, task.id)[-1] is State.FAILED


async def test_out_of_memory_is_named_in_the_reason(worker: Worker, runtime: FakeRuntime) -> None:
    task, _ = worker.submit(request(resources={"memory": "32MiB"}))
    container = container_of(await running(worker, task.id))

    runtime.crash(container, 137, oom=True)
    final = await finished(worker, task.id)

    assert final.state is State.FAILED
    assert final.exit_code == 137
    assert final.reason == "killed: out of memory (limit 32MiB)"


async def test_missing_image_fails_without_a_container(
    worker: Worker, runtime: FakeRuntime
) -> None:
    runtime.missing_images.add("ghost:latest")
    task, _ = worker.submit(request(image="ghost:latest"))

    final = await finished(worker, task.id)

    assert final.state is State.FAILED
    assert final.reason.startswith("container did not start:")
    assert "ghost:latest" in final.reason
    assert final.container_id is None
    assert final.exit_code is None
    assert runtime.containers == {}


async def test_missing_image_counts_as_a_failure_for_on_failure(
    worker: Worker, runtime: FakeRuntime
) -> None:
    runtime.missing_images.add("ghost:latest")
    task, _ = worker.submit(request(image="ghost:latest", restart=restart("on-failure", 1)))

    final = await finished(worker, task.id)

    assert final.state is State.FAILED
    assert final.restarts == 1
    # The engine's own words stay in the reason that `cube status` lists.
    assert final.reason == (
        "container did not start: pull ghost:latest: repository does not exist; "
        "gave up after 1 of 1 restarts"
    )
    assert runtime.containers == {}


async def test_a_refused_start_keeps_the_engines_reason_through_the_restarts(
    worker: Worker, runtime: FakeRuntime
) -> None:
    squatter, _ = worker.submit(request("squatter", ports=["8080:80"]))
    await running(worker, squatter.id)
    task, _ = worker.submit(request("web", ports=["8080:80"], restart=restart("on-failure", 2)))

    final = await finished(worker, task.id)

    refused = "container did not start: Bind for 0.0.0.0:8080 failed: port is already allocated"
    assert final.reason == f"{refused}; gave up after 2 of 2 restarts"
    scheduled = [e.reason for e in worker.events(task.id) if e.state is State.SCHEDULED]
    assert scheduled[1:] == [f"{refused}; restart {n} of 2 (on-failure)" for n in (1, 2)]


@pytest.mark.parametrize(
    "error",
    [NotFound("No such container: 4f2a"), KeyError("Id")],
    ids=["engine-404", "unexpected"],
)
async def test_every_error_of_a_start_is_a_failed_attempt_and_restarted(
    worker: Worker, runtime: FakeRuntime, error: Exception
) -> None:
    runtime.start_errors.append(error)  # e.g. the container was removed between create and start
    task, _ = worker.submit(request(restart=restart("on-failure", 1)))

    again = await running(worker, task.id, restarts=1)

    events = worker.events(task.id)
    failed = [e for e in events if e.state is State.FAILED]
    assert len(failed) == 1
    assert failed[0].reason.startswith("container did not start:")
    assert ("No such container: 4f2a" if isinstance(error, NotFound) else "KeyError") in (
        failed[0].reason
    )
    assert [c.info.id for c in runtime.containers.values()] == [again.container_id]


# --- stopping, in every state -------------------------------------------------------------------
async def test_stop_right_after_submit_never_starts_a_container(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request())

    stopped = await worker.stop(task.id)

    assert stopped.state is State.COMPLETED
    assert stopped.reason == "stopped by user"
    assert stopped.desired is DesiredState.STOP
    assert states(worker, task.id) == [State.PENDING, State.COMPLETED]
    assert runtime.containers == {}


async def test_a_stop_records_the_reason_its_caller_gives_through_the_api(
    worker: Worker,
) -> None:
    task, _ = worker.submit(request(restart=restart("always")))
    await running(worker, task.id)
    transport = httpx.ASGITransport(app=create_app(worker))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
        too_long = await client.delete(f"/v1/tasks/{task.id}", params={"reason": "x" * 501})
        assert too_long.status_code == 422
        response = await client.delete(
            f"/v1/tasks/{task.id}", params={"reason": "web was scaled to 1"}
        )
    assert response.status_code == 200
    stopped = worker.get(task.id)
    assert (stopped.state, stopped.reason) == (State.COMPLETED, "web was scaled to 1")
    assert stopped.desired_reason == "web was scaled to 1"
    assert worker.events(task.id)[-1].reason == "web was scaled to 1"


async def test_stop_a_running_task_removes_its_container(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request(restart=restart("always")))
    await running(worker, task.id)

    stopped = await worker.stop(task.id)

    assert stopped.state is State.COMPLETED
    assert stopped.reason == "stopped by user"
    assert stopped.exit_code == 143  # SIGTERM
    assert stopped.container_id is None
    assert stopped.restarts == 0  # "always" does not restart a stop
    assert runtime.containers == {}
    assert (await finished(worker, task.id)).state is State.COMPLETED


async def test_stop_a_failed_task_keeps_its_state_and_removes_the_container(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request())
    runtime.crash(container_of(await running(worker, task.id)), 3)
    await finished(worker, task.id)

    stopped = await worker.stop(task.id)

    assert stopped.state is State.FAILED
    assert stopped.exit_code == 3
    assert stopped.reason == "exited with code 3"
    assert stopped.container_id is None
    assert stopped.desired is DesiredState.STOP
    assert runtime.containers == {}
    assert worker.store.get_task(task.id).container_id is None


async def test_stop_during_the_restart_delay_cancels_the_restart(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request(restart=restart("on-failure", 2, delay=LONG_DELAY)))
    runtime.crash(container_of(await running(worker, task.id)), 3)
    waiting = await wait_until(in_state(worker, task.id, State.FAILED, reason="restart 1 of 2"))
    assert waiting.reason.startswith("exited with code 3; restart 1 of 2 (on-failure) in 60s")

    async with asyncio.timeout(5):  # a stop does not sit out the delay
        stopped = await worker.stop(task.id)
    final = await finished(worker, task.id)

    assert stopped.state is final.state is State.FAILED
    assert final.restarts == 0
    assert final.exit_code == 3
    assert final.container_id is None
    # no promise of a restart that will not come
    assert final.reason == "exited with code 3; restart cancelled: stopped by user"
    assert runtime.containers == {}
    assert State.SCHEDULED not in states(worker, task.id)[2:]


# --- idempotent submit ----------------------------------------------------------------------------
async def test_submit_with_the_same_id_and_spec_is_a_no_op(
    worker: Worker, runtime: FakeRuntime
) -> None:
    first, created = worker.submit(request(id="job-1"))
    assert created
    await running(worker, first.id)

    again, created_again = worker.submit(request(id="job-1"))

    assert not created_again
    assert again.id == first.id == "job-1"
    assert again.state is State.RUNNING
    assert [t.id for t in worker.list_tasks()] == ["job-1"]
    assert len(runtime.containers) == 1


async def test_submit_with_the_same_id_and_another_spec_conflicts(worker: Worker) -> None:
    worker.submit(request(id="job-1"))

    with pytest.raises(Conflict, match="job-1"):
        worker.submit(request(id="job-1", command=["sleep", "1"]))
    assert worker.get("job-1").spec.command == []


# --- what the node reports ------------------------------------------------------------------------
async def test_report_counts_only_tasks_that_still_hold_resources(
    worker: Worker, runtime: FakeRuntime
) -> None:
    up, _ = worker.submit(
        request("up", resources={"cpu": 1, "memory": "1GiB", "disk": "1GiB"}, ports=["8080:80"])
    )
    crashes, _ = worker.submit(
        request("crashes", resources={"cpu": 0.5, "memory": "512MiB"}, ports=["9090:90"])
    )
    stops, _ = worker.submit(
        request("stops", resources={"cpu": 2, "memory": "1GiB"}, ports=["7070:70"])
    )
    waits, _ = worker.submit(
        request(
            "waits",
            resources={"cpu": 0.25, "memory": "256MiB"},
            ports=["80"],  # not published on the node: no host port taken
            restart=restart("on-failure", delay=LONG_DELAY),
        )
    )
    for t in (up, crashes, stops, waits):
        await running(worker, t.id)

    before = worker.report()
    assert before.allocated == Resources(cpu=3.75, memory=2 * GiB + 768 * MiB, disk=GiB)
    assert before.used_ports == [7070, 8080, 9090]
    assert before.ports_in_use == [7070, 8080, 9090]  # what its containers publish, at least
    assert before.tasks == 4

    runtime.crash(container_of(worker.get(crashes.id)), 1)
    await worker.stop(stops.id)
    runtime.crash(container_of(worker.get(waits.id)), 1)
    await finished(worker, crashes.id)
    await wait_until(in_state(worker, waits.id, State.FAILED))

    after = worker.report()
    # "waits" is down but will restart here, so it keeps its reservation
    assert after.allocated == Resources(cpu=1.25, memory=GiB + 256 * MiB, disk=GiB)
    assert after.used_ports == [8080]
    assert after.ports_in_use == [8080]
    assert after.tasks == 2
    assert after.name == "w1"
    assert after.capacity == Resources(cpu=4, memory=4 * GiB)


# --- adoption after a worker restart -------------------------------------------------------------
async def test_a_new_worker_adopts_the_running_container(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    old = await make_worker()
    task, _ = old.submit(request())
    container = container_of(await running(old, task.id))
    history = old.events(task.id)
    await old.close()

    new = await make_worker()

    adopted = new.get(task.id)
    assert adopted.state is State.RUNNING
    assert adopted.container_id == container
    assert list(runtime.containers) == [container]
    assert new.events(task.id) == history  # nothing happened to the task
    # and the new worker supervises it: a crash is noticed
    runtime.crash(container, 4)
    assert (await finished(new, task.id)).exit_code == 4


async def test_adoption_with_an_empty_store_rebuilds_the_task_from_labels(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    old = await make_worker()
    submitted = request(
        env={"A": "1"}, ports=["8080:80"], resources={"cpu": 0.5, "memory": "128MiB"}
    )
    task, _ = old.submit(submitted)
    container = container_of(await running(old, task.id))
    await old.close()

    new = await make_worker(store=MemoryStore())

    rebuilt = new.get(task.id)
    # Labels carry no env value: the container runs on with its own, but a new one would
    # not get them, so the rebuilt task is not restarted (README: --store memory).
    hidden = {"env": {"A": HIDDEN}, "restart": RestartPolicy()}
    assert rebuilt.spec == submitted.spec().model_copy(update=hidden)
    assert "will not be restarted" in new.events(task.id)[0].reason
    assert rebuilt.state is State.RUNNING
    assert rebuilt.container_id == container
    assert rebuilt.node == "w1"
    assert list(runtime.containers) == [container]
    assert states(new, task.id) == [State.PENDING, State.SCHEDULED, State.RUNNING]
    assert new.report().allocated == Resources(cpu=0.5, memory=128 * MiB)
    stopped = await new.stop(task.id)
    assert stopped.state is State.COMPLETED
    assert runtime.containers == {}


@pytest.mark.parametrize("empty_store", [False, True], ids=["same-store", "empty-store"])
async def test_a_container_that_exited_while_away_gets_its_true_exit_code(
    make_worker: MakeWorker, runtime: FakeRuntime, empty_store: bool
) -> None:
    old = await make_worker()
    task, _ = old.submit(request())
    container = container_of(await running(old, task.id))
    await old.close()
    runtime.crash(container, 3)

    new = await make_worker(store=MemoryStore()) if empty_store else await make_worker()
    final = await finished(new, task.id)

    assert final.state is State.FAILED
    assert final.exit_code == 3
    assert final.reason == "exited with code 3"
    assert final.container_id == container


async def test_a_duplicate_container_of_one_task_is_removed(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    old = await make_worker()
    task, _ = old.submit(request())
    original = await running(old, task.id)
    await old.close()
    config = container_config(original, "w1")
    duplicate = await runtime.run(replace(config, name=config.name + "-dup"))
    # list the duplicate first, so that keeping the recorded container is a choice, not luck
    runtime.containers = {duplicate.id: runtime.containers.pop(duplicate.id), **runtime.containers}

    new = await make_worker()

    assert duplicate.id not in runtime.containers
    assert list(runtime.containers) == [original.container_id]
    adopted = await running(new, task.id)
    assert adopted.container_id == original.container_id


async def test_without_a_record_the_running_duplicate_is_kept(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    old = await make_worker()
    task, _ = old.submit(request())
    original = await running(old, task.id)
    await old.close()
    config = container_config(original, "w1")
    duplicate = await runtime.run(replace(config, name=config.name + "-dup"))
    runtime.crash(container_of(original), 1)

    new = await make_worker(store=MemoryStore())

    assert list(runtime.containers) == [duplicate.id]
    assert (await running(new, task.id)).container_id == duplicate.id


# --- a worker and its manager: what is still its own --------------------------------------------
def containers_of_task(runtime: FakeRuntime, task_id: str) -> list[str]:
    return [i for i, c in runtime.containers.items() if c.info.labels[LABEL_TASK_ID] == task_id]


def answer(*tasks: str, node_timeout: float = 10.0) -> JoinAnswer:
    return JoinAnswer(
        node=Node(name="w1", address="http://w1"), tasks=list(tasks), node_timeout=node_timeout
    )


async def test_a_returning_worker_starts_nothing_until_its_manager_says_what_is_its_own(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    old = await make_worker()
    always = {"restart": restart("always")}
    moved, crashed_moved, kept = (old.submit(request(n, **always))[0].id for n in "abc")
    containers = {t: container_of(await running(old, t)) for t in (moved, crashed_moved, kept)}
    await old.close()
    runtime.crash(containers[crashed_moved], 1)  # while the worker is away
    runtime.crash(containers[kept], 1)

    new = await make_worker(wait_for_assignment=True)
    assert new.runners == {}  # adopted, supervised by nobody: nothing can start
    assert new.get(moved).container_id == containers[moved]
    assert new.adopted_running() == [moved]  # what its join tells the manager

    new.joined(answer(kept))  # the manager moved the other two while it was away

    assert (await running(new, kept, restarts=1)).container_id != containers[kept]
    for task_id in (moved, crashed_moved):
        task = await finished(new, task_id)
        assert (task.state, task.reason) == (
            State.COMPLETED,
            "stopped: its manager placed it elsewhere",
        )
        assert containers_of_task(runtime, task_id) == []  # none started, the old one gone


async def test_a_worker_its_manager_leaves_silent_stops_every_task_and_says_why(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    worker = await make_worker(stop_after_disconnect=0.2)
    ids = [worker.submit(request(n))[0].id for n in "ab"]
    for task_id in ids:
        await running(worker, task_id)

    for task_id in ids:  # nobody calls this worker: no manager
        task = await finished(worker, task_id)
        assert task.state is State.COMPLETED
        assert task.reason.startswith("stopped: no call from the manager for "), task.reason
        assert task.reason.endswith("(--stop-after-disconnect 0.2s)"), task.reason
    assert runtime.containers == {}


def test_the_disconnect_window_counts_from_the_last_call_and_zero_means_never() -> None:
    assert not should_stop_tasks(100.0, 109.9, 10.0)
    assert should_stop_tasks(100.0, 110.0, 10.0)
    assert not should_stop_tasks(0.0, 1e6, None)
    assert not should_stop_tasks(0.0, 1e6, 0.0)


async def test_a_join_and_each_call_set_the_disconnect_window_unless_one_was_given(
    make_worker: MakeWorker,
) -> None:
    default, given = await make_worker(), await make_worker(stop_after_disconnect=30.0)
    for worker in (default, given):
        worker.joined(answer(node_timeout=4.0))
    assert (default.stop_after_disconnect, given.stop_after_disconnect) == (4.0, 30.0)
    for worker in (default, given):  # the fleet grew: the manager's timeout with it
        worker.heard(node_timeout=28.0)
    assert (default.stop_after_disconnect, given.stop_after_disconnect) == (28.0, 30.0)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("28", 28.0),
        ("2.5", 2.5),
        *((unusable, None) for unusable in (None, "", "x", "0", "-1", "inf", "nan")),
    ],
)
def test_only_a_usable_announced_timeout_is_taken(
    header: str | None, seconds: float | None
) -> None:
    assert announced_timeout(header) == seconds


# --- the container engine goes away ---------------------------------------------------------------
@pytest.fixture
def quick_engine_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "ENGINE_RETRY", 0.01)


@pytest.mark.usefixtures("quick_engine_retry")
async def test_a_task_submitted_during_an_outage_starts_when_the_engine_is_back(
    worker: Worker, runtime: FakeRuntime
) -> None:
    runtime.available = False
    task, _ = worker.submit(request())
    await wait_until(in_state(worker, task.id, State.SCHEDULED))
    await asyncio.sleep(0.2)  # the outage lasts: many retries, no progress, no failure

    assert worker.get(task.id).state is State.SCHEDULED
    assert runtime.containers == {}
    assert task.id in worker.runners

    runtime.available = True
    started = await running(worker, task.id)

    assert list(runtime.containers) == [started.container_id]
    assert states(worker, task.id) == [State.PENDING, State.SCHEDULED, State.RUNNING]


@pytest.mark.usefixtures("quick_engine_retry")
async def test_an_exit_during_an_outage_is_recorded_when_the_engine_is_back(
    worker: Worker, runtime: FakeRuntime
) -> None:
    task, _ = worker.submit(request())
    container = container_of(await running(worker, task.id))
    runtime.available = False
    runtime.crash(container, 5)
    await asyncio.sleep(0.2)  # the runner hears of the exit but cannot inspect the container

    assert worker.get(task.id).state is State.RUNNING

    runtime.available = True
    final = await finished(worker, task.id)

    assert final.state is State.FAILED
    assert final.exit_code == 5


@pytest.mark.usefixtures("quick_engine_retry")
async def test_an_exit_while_the_engine_is_away_is_restarted_without_counting_it(
    worker: Worker, runtime: FakeRuntime
) -> None:
    # max_attempts 0: any counted failure would end the task for good.
    task, _ = worker.submit(request(restart=restart("on-failure", 0)))
    first = container_of(await running(worker, task.id))
    runtime.available = False  # the engine stops, and stops its containers
    runtime.crash(first, 143)
    await wait_until(lambda: worker.engine.down)
    runtime.available = True

    again = await wait_until(
        lambda: (t := worker.get(task.id)).state is State.RUNNING and t.container_id != first and t
    )

    assert again.restarts == 0
    failed = [e for e in worker.events(task.id) if e.state is State.FAILED]
    assert [e.exit_code for e in failed] == [143]
    restarted = worker.events(task.id)[-2]
    assert restarted.state is State.SCHEDULED
    assert restarted.reason == (
        "exited with code 143; engine restarted or unreachable, not counted: restart (on-failure)"
    )

    runtime.crash(again.container_id or "", 143)  # the engine answers: the task's own failure
    final = await finished(worker, task.id)
    assert final.state is State.FAILED
    assert final.reason == "exited with code 143; gave up after 0 of 0 restarts"


# --- a store that refuses writes (a full disk) ------------------------------------------------


async def test_a_runner_the_store_failed_runs_again_from_what_was_saved(
    make_worker: MakeWorker, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(background, "MAX_BACKOFF", 0.05)
    store = FullStore()
    worker = await make_worker(store=store)
    task, _ = worker.submit(request(restart=restart("always")))
    first = await running(worker, task.id)

    store.full = True
    runtime.crash(container_of(first), 0)
    await wait_until(lambda: f"task {task.id}" in worker.loops.trouble)
    # Its exit could not be saved: shown as saved, not as the crashed runner had it.
    assert worker.get(task.id).state is State.RUNNING
    with pytest.raises(StoreFull):
        await worker.stop(task.id, wait=False)
    assert worker.get(task.id).desired is DesiredState.RUN

    store.full = False
    second = await running(worker, task.id, restarts=1)
    assert second.container_id != first.container_id
    assert len(worker.runners) == 1


# --- allocations ---------------------------------------------------------------------------

#: No ``size``: as recorded before Cube sent it. Such an allocation has a network, as it had.
ALLOC = AllocRef(id="a1b2c3d4e5f6a7b8", job="shop", group="web", index=0)


def member(name: str, **fields: Any) -> TaskRequest:
    """A task of ALLOC, with the ID the manager gives it."""
    return request(name, id=f"{ALLOC.id}-{name}", alloc=ALLOC.model_dump(), **fields)


def alloc_networks(runtime: FakeRuntime) -> list[str]:
    return [n.name for n in runtime.networks_by_name.values() if LABEL_ALLOC_ID in n.labels]


async def test_an_allocation_with_an_empty_store_is_rebuilt_from_labels_and_its_network_kept(
    make_worker: MakeWorker, runtime: FakeRuntime
) -> None:
    old = await make_worker()
    task, _ = old.submit(member("api"))
    container = container_of(await running(old, task.id))
    network = runtime.containers[container].network
    await old.close()

    new = await make_worker(store=MemoryStore())

    assert new.get(task.id).alloc == ALLOC
    assert alloc_networks(runtime) == [network]
    await new.stop(task.id)
    assert alloc_networks(runtime) == []


async def test_the_network_goes_when_the_tasks_ended_for_good_and_comes_back_with_a_new_one(
    worker: Worker, runtime: FakeRuntime
) -> None:
    api, _ = worker.submit(member("api"))
    step, _ = worker.submit(member("step"))
    runtime.crash(container_of(await running(worker, api.id)), 0)
    await finished(worker, api.id)
    assert len(alloc_networks(runtime)) == 1  # the other task still runs
    runtime.crash(container_of(await running(worker, step.id)), 3)
    await finished(worker, step.id)
    await wait_until(lambda: alloc_networks(runtime) == [])
    assert len(runtime.containers) == 2  # exited, kept for their logs

    await worker.stop(api.id)  # the manager places it here again: a new attempt
    worker.submit(member("api"))
    again = await running(worker, api.id)
    assert alloc_networks(runtime) == [runtime.containers[container_of(again)].network]


async def test_a_network_the_engine_would_not_remove_is_removed_on_a_later_pass(
    worker: Worker, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, _ = worker.submit(member("api"))
    await running(worker, task.id)
    remove = runtime.remove_network
    refusals = 0

    async def refuse_once(name: str) -> None:
        nonlocal refusals
        refusals += 1
        if refusals == 1:
            raise RuntimeUnavailable("engine away")
        await remove(name)

    monkeypatch.setattr(runtime, "remove_network", refuse_once)

    await worker.stop(task.id)

    await wait_until(lambda: alloc_networks(runtime) == [])
    assert refusals == 2
