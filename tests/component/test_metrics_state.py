"""The metrics computed from an agent's records, without Docker: the manager's gauges as a
pure function of its records and the clock, and a worker's counters on the FakeRuntime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from cube.job.model import Allocation, AllocStatus, Job, JobStatus
from cube.metrics.manager import Snapshot, state_metrics
from cube.node import Node, NodeState, Resources
from cube.protocol import NODE_TIMEOUT_HEADER
from cube.runtime.fake import FakeRuntime
from cube.store.memory import MemoryStore
from cube.task.model import Task
from cube.task.spec import AllocRef, TaskSpec
from cube.task.state import State
from cube.worker.agent import Worker
from cube.worker.api import create_app
from cube.worker.fleet import Fleet
from tests.support.scrape import value
from tests.support.waiting import wait_until
from tests.support.worker import request, restart

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GiB = 1024**3


def task(name: str, state: State, *, since: float = 0, alloc: AllocRef | None = None) -> Task:
    spec = TaskSpec(name=name, image="cube-busybox:latest")
    when = NOW - timedelta(seconds=since)
    return Task(spec=spec, state=state, node="w1", alloc=alloc, updated_at=when)


class Fixed(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterable[Metric]:
        return state_metrics(self.snap, now=NOW)


def text_of(snap: Snapshot) -> str:
    """The families in Prometheus' text format, as a scrape would read them."""
    registry = CollectorRegistry()
    registry.register(Fixed(snap))
    return generate_latest(registry).decode()


def test_tasks_by_state_job_and_group_and_the_oldest_pending_age() -> None:
    ref = AllocRef(id="a1", job="shop", group="web", index=0)
    snap = Snapshot(
        tasks=[
            task("a", State.RUNNING),
            task("b", State.PENDING, since=30),
            task("c", State.PENDING, since=5),
            task("d", State.FAILED),
            task("web", State.RUNNING, alloc=ref),
        ],
        nodes=[],
        jobs=[],
        allocs=[],
    )
    text = text_of(snap)
    assert value(text, "cube_tasks", state="running") == 2
    assert value(text, "cube_tasks", state="running", job_name="shop", group="web") == 1
    assert value(text, "cube_tasks", state="pending") == 2
    assert value(text, "cube_tasks", state="completed") == 0  # present, at 0
    assert value(text, "cube_tasks_pending") == 2
    assert value(text, "cube_tasks_pending_oldest_age_seconds") == 30
    # One series per task that has not ended, at its current state.
    assert value(text, "cube_task_state", name="b", state="pending") == 1
    assert value(text, "cube_task_state", name="a") == 1
    assert value(text, "cube_task_state", name="d") is None


def test_allocations_jobs_nodes_and_per_node_resources() -> None:
    def alloc(index: int, status: AllocStatus) -> Allocation:
        return Allocation(
            job="shop", group="web", index=index, version=1, group_hash="h", status=status
        )

    nodes = [
        Node(
            name="w1",
            address="http://w1",
            capacity=Resources(cpu=4, memory=8 * GiB, disk=GiB),
            allocated=Resources(cpu=1.5, memory=GiB),
        ),
        Node(name="w2", address="http://w2", state=NodeState.DRAINING),
    ]
    snap = Snapshot(
        tasks=[],
        nodes=nodes,
        jobs=[Job(id="shop", status=JobStatus.RUNNING), Job(id="b", status=JobStatus.COMPLETE)],
        allocs=[
            alloc(0, AllocStatus.RUNNING),
            alloc(1, AllocStatus.RUNNING),
            alloc(2, AllocStatus.LOST),
        ],
    )
    text = text_of(snap)
    assert value(text, "cube_allocations", job_name="shop", group="web", status="running") == 2
    assert value(text, "cube_allocations", status="lost") == 1
    assert value(text, "cube_jobs", status="running") == 1
    assert value(text, "cube_jobs", status="complete") == 1
    assert value(text, "cube_jobs", status="dead") == 0
    assert value(text, "cube_nodes", state="ready") == 1
    assert value(text, "cube_nodes", state="draining") == 1
    assert value(text, "cube_nodes", state="down") == 0
    assert value(text, "cube_node_capacity_cpu_cores", node="w1") == 4
    assert value(text, "cube_node_capacity_memory_bytes", node="w1") == 8 * GiB
    assert value(text, "cube_node_capacity_disk_bytes", node="w1") == GiB
    assert value(text, "cube_node_allocated_cpu_cores", node="w1") == 1.5
    assert value(text, "cube_node_allocated_memory_bytes", node="w1") == GiB
    assert value(text, "cube_node_allocated_disk_bytes", node="w2") == 0


# --- a worker on the FakeRuntime -----------------------------------------------------------------
@pytest.fixture
async def worker() -> AsyncIterator[tuple[Worker, FakeRuntime]]:
    runtime = FakeRuntime()
    worker = Worker(
        name="w1",
        runtime=runtime,
        store=MemoryStore(),
        capacity=Resources(cpu=4, memory=4 * GiB),
        poll_interval=0.05,
    )
    await worker.start()
    yield worker, runtime
    await worker.close()
    await runtime.close()


def scraped(worker: Worker) -> str:
    return generate_latest(worker.telemetry.registry).decode()


async def test_restarts_and_running_containers_follow_the_tasks(
    worker: tuple[Worker, FakeRuntime],
) -> None:
    w, runtime = worker
    task, _ = w.submit(request("flaky", restart=restart("on-failure", 3)))
    await wait_until(lambda: w.get(task.id).container_id)
    assert value(scraped(w), "cube_worker_containers_running", node="w1") == 1
    assert value(scraped(w), "cube_worker_container_start_duration_seconds_count") == 1
    runtime.crash(w.get(task.id).container_id or "")
    await wait_until(lambda: w.get(task.id).restarts == 1 and w.get(task.id).state is State.RUNNING)
    text = scraped(w)
    assert value(text, "cube_worker_task_restarts_total", task=task.id, name="flaky") == 1
    assert value(text, "cube_worker_container_start_duration_seconds_count") == 2


async def test_engine_errors_and_event_stream_reconnects_are_counted(
    worker: tuple[Worker, FakeRuntime],
) -> None:
    w, runtime = worker
    assert value(scraped(w), "cube_worker_engine_errors_total") == 0
    assert value(scraped(w), "cube_worker_event_stream_reconnects_total") == 0
    runtime.available = False  # the poll loop's listings are refused
    await runtime.close()  # and the event stream ends
    await wait_until(lambda: (value(scraped(w), "cube_worker_engine_errors_total") or 0) >= 2)
    await wait_until(lambda: value(scraped(w), "cube_worker_event_stream_reconnects_total"))


async def test_a_scrape_is_not_a_call_from_the_manager(worker: tuple[Worker, FakeRuntime]) -> None:
    """A worker that Prometheus scrapes still notices that its manager is gone."""
    w, _ = worker
    transport = httpx.ASGITransport(app=create_app(w))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
        w.last_heard = 0.0
        assert (await client.get("/metrics")).status_code == 200
        assert w.last_heard == 0.0
        assert (await client.get("/v1/tasks")).status_code == 200
        assert w.last_heard > 0.0  # the manager's calls do count
        # ...and the node timeout they tell is the worker's disconnect window from then on.
        told = {NODE_TIMEOUT_HEADER: "212.5"}
        assert (await client.get("/v1/changes", headers=told)).status_code == 200
        assert w.stop_after_disconnect == 212.5


async def test_requests_are_timed_by_route_template_and_a_known_method(
    worker: tuple[Worker, FakeRuntime],
) -> None:
    """Neither a task ID nor a made-up method makes a series of its own."""
    w, _ = worker
    transport = httpx.ASGITransport(app=create_app(w))
    async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
        assert (await client.get("/v1/tasks/nope")).status_code == 404
        assert (await client.request("BREW", "/v1/tasks")).status_code == 405
        assert (await client.request("BREW", "/no/such/path")).status_code == 404
    text = scraped(w)
    name = "cube_http_request_duration_seconds_count"
    assert value(text, name, route="/v1/tasks/{task_id}", method="GET", status="404") == 1
    assert value(text, name, route="/v1/tasks", method="other", status="405") == 1
    assert value(text, name, route="unrouted", method="other", status="404") == 1
    assert value(text, name, method="BREW") is None


async def test_each_worker_of_a_simulated_fleet_has_its_own_metrics() -> None:
    """One app serves the whole fleet: /metrics reads the worker the path names."""
    fleet = Fleet(count=2, capacity=Resources(cpu=1, memory=GiB), token="t" * 32)
    headers = {"Authorization": f"Bearer {'t' * 32}"}
    transport = httpx.ASGITransport(app=fleet.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://f") as client:
        for name in fleet.workers:
            response = await client.get(f"/w/{name}/metrics", headers=headers)
            assert response.status_code == 200
            nodes = {
                sample.labels["node"]
                for family in text_string_to_metric_families(response.text)
                for sample in family.samples
                if "node" in sample.labels
            }
            assert nodes == {name}


def test_no_manager_series_has_a_label_prometheus_sets_on_every_target() -> None:
    """Prometheus labels each scraped series with ``job`` and ``instance`` and renames a
    target's own (``exported_job``): a Cube job is ``job_name``, queryable as written."""
    ref = AllocRef(id="a1", job="shop", group="web", index=0)
    snap = Snapshot(
        tasks=[task("web", State.RUNNING, alloc=ref)],
        nodes=[Node(name="w1", address="http://w1")],
        jobs=[Job(id="shop", status=JobStatus.RUNNING)],
        allocs=[Allocation(job="shop", group="web", index=0, version=1, group_hash="h")],
    )
    text = text_of(snap)
    labels = {
        name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for name in sample.labels
    }
    assert "job_name" in labels
    assert not labels & {"job", "instance"}
    assert value(text, "cube_allocations", job_name="shop", status="pending") == 1
