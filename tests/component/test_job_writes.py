"""The job service's own writes (jobs, versions, allocations, deployments): saved off the
loop, then shown (cube.manager.job_drafts).

In-process (tests/support/fake_nodes.py) on a real SQLite store, or on a store
that refuses writes on demand (the fixtures ``on_sqlite`` and ``refused``:
tests/support/manager_stores.py): while a change
waits for the store the loop goes on and nobody sees it; a submit, scale, stop or purge
the store refuses answers 503 and shows nothing; a pass whose changes are refused shows
none of them, and the next pass makes them, once (a placement whose answer was lost is
read back, not placed again).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cube.errors import StoreFull
from cube.job.deployment import DeploymentStatus
from cube.job.model import AllocDesired, JobStatus
from cube.job.parse import parse_job
from cube.job.spec import JobSpec
from cube.manager.api import create_app
from cube.manager.core import Manager
from tests.support.deploying import Cluster, at
from tests.support.deploying import spec as deployed_spec
from tests.support.fake_nodes import NOW, run_all, settle
from tests.support.manager_stores import OnSqlite, Refused, Refusing, turns


def shop(count: int = 2) -> JobSpec:
    task = {"name": "api", "image": "busybox", "resources": {"cpu": 0.5}}
    return parse_job({"job": "shop", "groups": [{"name": "web", "count": count, "tasks": [task]}]})


async def placed(refused: Refused, count: int = 2) -> Manager:
    """``shop`` submitted, placed and sent, its tasks Running."""
    manager = refused.manager
    await manager.jobs.submit(shop(count))
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    run_all(manager)
    await manager.registry.settled()
    return manager


async def test_a_submit_is_shown_once_saved_and_the_loop_goes_on_while_it_waits(
    on_sqlite: OnSqlite,
) -> None:
    store, manager = on_sqlite.store, on_sqlite.manager

    with on_sqlite.lock_held():
        submitting = asyncio.create_task(manager.jobs.submit(shop()))
        await turns()  # the loop goes on: the submit waits on the store's thread
        assert not submitting.done()
        assert "shop" not in manager.jobs.jobs  # not saved: not shown
        assert manager.jobs.deployments.of_job("shop") == []
    job, created = await submitting

    assert created
    assert manager.jobs.job("shop").version == store.get_job("shop").version == job.version
    assert [d.job for d in manager.jobs.deployments.of_job("shop")] == ["shop"]


async def test_a_pass_shows_its_placements_once_saved_and_the_loop_goes_on_while_it_waits(
    on_sqlite: OnSqlite,
) -> None:
    store, manager, workers = on_sqlite.store, on_sqlite.manager, on_sqlite.workers
    await manager.jobs.submit(shop())

    with on_sqlite.lock_held():
        passing = asyncio.create_task(manager.jobs.reconcile_all(NOW))
        await turns()
        assert not passing.done()
        assert manager.jobs.allocations(job="shop") == []  # not saved: not shown
        assert manager.get_node("n1").allocated.cpu == 1  # but their resources are held
        assert workers.sent == []  # nor sent
    await passing
    await settle(manager)

    assert len(manager.jobs.allocations(job="shop")) == len(store.list_allocations()) == 2
    assert len(workers.sent) == 2
    assert manager.get_node("n1").allocated.cpu == 1  # counted once: placed, no longer held


async def test_a_refused_submit_is_a_503_and_shows_nothing(refused: Refused) -> None:
    refused.store.full = True
    transport = httpx.ASGITransport(app=create_app(refused.manager))
    body = shop().model_dump(mode="json")
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        response = await client.post("/v1/jobs", json=body)
        assert response.status_code == 503
        assert response.json()["error"] == "store_full"
        assert (await client.get("/v1/jobs/shop")).status_code == 404
        assert refused.manager.jobs.deployments.of_job("shop") == []

        refused.store.full = False
        response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 201
    assert refused.store.get_job("shop").version == 1


async def test_a_refused_scale_shows_no_new_version(refused: Refused) -> None:
    manager = await placed(refused)
    deployments = manager.jobs.deployments.of_job("shop")

    refused.store.full = True
    with pytest.raises(StoreFull):
        await manager.jobs.scale("shop", "web", 3)
    assert manager.jobs.job("shop").version == 1
    assert [v.number for v in manager.jobs.job_versions("shop")] == [1]
    assert manager.jobs.deployments.of_job("shop") == deployments

    refused.store.full = False
    assert (await manager.jobs.scale("shop", "web", 3)).version == 2
    await manager.jobs.reconcile_all(NOW)
    assert len(manager.jobs.allocations(job="shop")) == 3


async def test_a_refused_stop_stops_nothing(refused: Refused) -> None:
    manager = await placed(refused)

    refused.store.full = True
    with pytest.raises(StoreFull):
        await manager.jobs.stop("shop")
    await settle(manager)
    assert not manager.jobs.job("shop").stopped
    assert all(a.desired is AllocDesired.RUN for a in manager.jobs.allocations(job="shop"))
    assert refused.workers.stopped == []  # no task was told to stop

    refused.store.full = False
    assert (await manager.jobs.stop("shop")).stopped
    await settle(manager)
    assert all(a.desired is AllocDesired.STOP for a in refused.store.list_allocations())
    assert len(refused.workers.stopped) == 2


async def test_a_refused_purge_forgets_nothing(refused: Refused) -> None:
    manager = await placed(refused)

    refused.store.full = True
    with pytest.raises(StoreFull):
        await manager.jobs.stop("shop", purge=True)
    await settle(manager)
    assert len(manager.jobs.allocations(job="shop")) == 2
    assert not manager.jobs.job("shop").stopped
    assert refused.workers.stopped == []

    refused.store.full = False
    await manager.jobs.stop("shop", purge=True)
    assert "shop" not in manager.jobs.jobs
    assert refused.store.find_job("shop") is None
    assert manager.jobs.allocations() == []
    assert manager.jobs.deployments.of_job("shop") == refused.store.list_deployments() == []


async def test_a_refused_pass_shows_no_placement_and_the_next_pass_places_each_once(
    refused: Refused,
) -> None:
    manager = refused.manager
    await manager.jobs.submit(shop())

    refused.store.full = True
    await manager.jobs.reconcile_all(NOW)  # logged: the loop goes on
    await settle(manager)
    assert manager.jobs.allocations() == []
    assert manager.get_node("n1").allocated.cpu == 0  # the held resources are given back
    assert refused.workers.sent == []
    assert manager.jobs.job("shop").status is JobStatus.PENDING

    refused.store.full = False
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert len(manager.jobs.allocations()) == len(refused.store.list_allocations()) == 2
    assert len(refused.workers.sent) == 2


async def test_a_placement_saved_whose_answer_was_lost_is_read_back_not_placed_again(
    refused: Refused,
) -> None:
    manager = refused.manager
    await manager.jobs.submit(shop())

    refused.store.lose_answers = True  # saved, but the pass is told it was not
    await manager.jobs.reconcile_all(NOW)
    await settle(manager)
    assert manager.jobs.allocations() == []  # not shown
    assert len(refused.store.list_allocations()) == 2  # but saved

    refused.store.lose_answers = False
    await manager.jobs.reconcile_all(NOW)  # reads the job back first
    await settle(manager)
    shown = manager.jobs.allocations(job="shop")
    assert {a.id for a in shown} == {a.id for a in refused.store.list_allocations()}
    assert len(shown) == 2  # none placed twice
    assert len(refused.workers.sent) == 2  # their tasks started, once each


async def test_a_refused_deployment_step_is_not_shown_and_the_next_pass_makes_it() -> None:
    store = Refusing()
    c = Cluster(store=store)
    await c.manager.jobs.submit(deployed_spec())
    await c.passes(0, 0.5)
    assert c.deployment().status is DeploymentStatus.RUNNING

    store.full = True
    await c.passes(1.5)  # every allocation healthy: the deployment would succeed
    assert c.deployment().status is DeploymentStatus.RUNNING
    assert store.find_deployment(c.deployment().id) == c.deployment()
    assert not any(a.healthy for a in c.allocs())  # nor the verdicts it rests on

    store.full = False
    await c.passes(1.6)
    assert c.deployment().status is DeploymentStatus.SUCCESSFUL
    assert store.find_deployment(c.deployment().id) == c.deployment()
    await c.manager.close()


async def test_a_refused_promotion_is_a_503_and_moves_nothing() -> None:
    store = Refusing()
    c = Cluster(store=store)
    await c.manager.jobs.submit(deployed_spec())
    await c.passes(0, 0.5, 1.5)
    await c.manager.jobs.submit(deployed_spec("busybox:2", canary=1))
    await c.passes(2, 2.5, 3.5)
    waiting = c.deployment()

    store.full = True
    transport = httpx.ASGITransport(app=create_app(c.manager))
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        response = await client.post("/v1/jobs/shop/promote")
    assert response.status_code == 503
    assert c.deployment() == waiting == store.find_deployment(waiting.id)

    store.full = False
    promoted = await c.manager.jobs.deployment_moves.promote("shop", at(4))
    assert promoted.id == waiting.id
    assert store.find_deployment(waiting.id) == c.deployment() == promoted
    await c.manager.close()
