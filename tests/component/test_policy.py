"""Safe defaults: what a task may ask for beyond an isolated container needs the node's consent.

Pure logic on the in-memory runtime and the scheduler; the same refusal over real
HTTP and Docker is in tests/e2e/test_security.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cube.errors import InvalidSpec
from cube.node import Node, Resources
from cube.runtime.fake import FakeRuntime
from cube.scheduler import make_scheduler
from cube.store.memory import MemoryStore
from cube.task.spec import Privilege, TaskRequest, TaskSpec, privileges
from cube.worker.agent import Worker

IMAGE = "cube-busybox:latest"
MakeWorker = Callable[..., Awaitable[Worker]]


def spec(**fields: object) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "image": IMAGE, **fields})


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({}, set()),
        ({"privileged": True}, {Privilege.PRIVILEGED}),
        ({"network": "host"}, {Privilege.HOST_NETWORK}),
        ({"network": "none"}, set()),
        ({"mounts": [{"source": "/etc", "target": "/host-etc"}]}, {Privilege.HOST_MOUNTS}),
    ],
)
def test_privileges_a_spec_asks_for(fields: dict[str, object], wanted: set[Privilege]) -> None:
    assert privileges(spec(**fields)) == wanted


def test_mount_paths_must_be_absolute() -> None:
    with pytest.raises(ValueError, match=r"mounts\.0\.source"):
        TaskRequest.model_validate(
            {"name": "t", "image": IMAGE, "mounts": [{"source": "etc", "target": "/x"}]}
        )


@pytest.fixture
async def make_worker() -> AsyncIterator[MakeWorker]:
    workers: list[Worker] = []

    async def make(*allow: Privilege) -> Worker:
        worker = Worker(
            name="w1",
            runtime=FakeRuntime(),
            store=MemoryStore(),
            capacity=Resources(cpu=2, memory=2**30),
            allow=allow,
        )
        await worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close()


async def test_worker_refuses_privileges_its_operator_did_not_allow(
    make_worker: MakeWorker,
) -> None:
    worker = await make_worker()
    request = TaskRequest.model_validate(
        {"name": "t", "image": IMAGE, "privileged": True, "network": "host"}
    )
    with pytest.raises(InvalidSpec) as caught:
        worker.submit(request)
    fields = [e.field for e in caught.value.errors]
    assert fields == ["network", "privileged"]
    assert "--allow privileged" in caught.value.message
    assert worker.list_tasks() == []  # refused means nothing was created


async def test_worker_runs_what_its_operator_allowed(make_worker: MakeWorker) -> None:
    worker = await make_worker(Privilege.PRIVILEGED)
    task, created = worker.submit(
        TaskRequest.model_validate({"name": "t", "image": IMAGE, "privileged": True})
    )
    assert created
    assert worker.report().allows == ["privileged"]
    assert task.spec.privileged


def node(name: str, *allows: str) -> Node:
    return Node(
        name=name,
        address=f"http://{name}",
        capacity=Resources(cpu=4, memory=8 * 2**30),
        allows=list(allows),
    )


def test_scheduler_places_privileged_tasks_only_where_allowed() -> None:
    scheduler = make_scheduler("spread")
    nodes = [node("a"), node("b", "privileged"), node("c", "host-network")]
    decision = scheduler.place(spec(privileged=True), nodes)
    assert decision.node == "b"
    assert decision.filtered == {"a": "does not allow privileged", "c": "does not allow privileged"}


def test_scheduler_explains_why_nothing_allows_it() -> None:
    decision = make_scheduler("epvm").place(spec(network="host"), [node("a"), node("b")])
    assert decision.node is None
    assert "host-network" in decision.reason
