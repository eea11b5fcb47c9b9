"""The store contract for jobs, versions and allocations: every test runs on both stores.

The SQLite-only tests at the end cover reopening, and a database written before jobs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cube.errors import Conflict, NotFound
from cube.job.deployment import Deployment, DeploymentStatus, GroupDeployment
from cube.job.model import Allocation, AllocStatus, Job, JobVersion
from cube.job.parse import parse_job
from cube.job.spec import JobSpec
from cube.store import SqliteStore, Store
from cube.store.sqlite import _SCHEMA, SCHEMA_VERSION
from tests.support.records import make_task
from tests.support.store_kinds import KINDS, opened

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each test runs on both stores, each also through AsyncStore (see tests/store_kinds)."""
    with opened(request.param, tmp_path) as store:
        yield store


def make_spec(name: str = "shop", count: int = 3) -> JobSpec:
    return parse_job(
        {
            "job": name,
            "groups": [
                {"name": "web", "count": count, "tasks": [{"name": "api", "image": "busybox"}]}
            ],
        }
    )


def submit(store: Store, name: str = "shop", count: int = 3, number: int = 1) -> JobVersion:
    version = JobVersion.of(make_spec(name, count), number, now=T0)
    store.save_job(Job(id=name, version=number, created_at=T0, updated_at=T0), [version])
    return version


def make_alloc(job: str = "shop", index: int = 0, node: str | None = "n1") -> Allocation:
    return Allocation(job=job, group="web", index=index, version=1, group_hash="h", node=node)


# --- jobs and versions ---------------------------------------------------------------------


def test_a_saved_job_and_its_version_come_back_equal(store: Store) -> None:
    version = submit(store)

    assert store.get_job("shop") == Job(id="shop", created_at=T0, updated_at=T0)
    assert store.find_job("shop") == store.get_job("shop")
    assert store.job_versions("shop") == [version]
    assert store.get_job_version("shop", 1) == version


def test_a_secret_env_value_is_kept_by_the_store_and_counts_in_the_spec_hash(
    store: Store,
) -> None:
    """Answers show ``<secret>``; the store must keep the value, or a restarted manager
    would start the job's containers with ``<secret>`` in their environment."""

    def with_secret(value: str) -> JobSpec:
        task = {"name": "api", "image": "busybox", "env": {"K": {"secret": True, "value": value}}}
        return parse_job({"job": "vault", "groups": [{"name": "g", "tasks": [task]}]})

    version = JobVersion.of(with_secret("s3cret"), 1, now=T0)
    store.save_job(Job(id="vault", created_at=T0, updated_at=T0), [version])
    (back,) = store.job_versions("vault")
    assert back.spec.groups[0].tasks[0].env_values() == {"K": "s3cret"}
    assert "s3cret" not in back.model_dump_json()  # what an answer would show
    assert JobVersion.of(with_secret("other"), 1, now=T0).spec_hash != version.spec_hash


def test_unknown_jobs_and_versions_are_not_found(store: Store) -> None:
    assert store.find_job("nope") is None
    with pytest.raises(NotFound, match="job nope not found"):
        store.get_job("nope")
    with pytest.raises(NotFound):
        store.delete_job("nope")
    with pytest.raises(NotFound):
        store.job_versions("nope")
    submit(store)
    with pytest.raises(NotFound, match="job shop has no version 2"):
        store.get_job_version("shop", 2)


def test_versions_accumulate_oldest_first(store: Store) -> None:
    v1 = submit(store, count=3)
    v2 = submit(store, count=5, number=2)

    assert store.job_versions("shop") == [v1, v2]
    assert store.get_job("shop").version == 2
    assert [j.id for j in store.list_jobs()] == ["shop"]


def test_saving_a_version_again_is_harmless_but_another_spec_conflicts(store: Store) -> None:
    v1 = submit(store)
    store.save_job(store.get_job("shop"), [v1])  # a retried submit
    assert store.job_versions("shop") == [v1]

    other = JobVersion.of(make_spec(count=9), 1, now=T0)
    changed = Job(id="shop", status_reason="must not be saved")
    with pytest.raises(Conflict, match="job shop version 1 has another spec"):
        store.save_job(changed, [other])
    assert store.job_versions("shop") == [v1]
    assert store.get_job("shop").status_reason == ""  # all or nothing


def test_list_jobs_oldest_first_and_replacing_keeps_the_place(store: Store) -> None:
    for name in ("b", "a", "c"):
        submit(store, name)
    job = store.get_job("b")
    job.stopped = True
    store.save_job(job)

    assert [j.id for j in store.list_jobs()] == ["b", "a", "c"]
    assert store.get_job("b").stopped


# --- allocations ---------------------------------------------------------------------------


def test_allocations_are_listed_oldest_first_by_job_and_node(store: Store) -> None:
    submit(store, "shop")
    submit(store, "logs")
    a0, a1 = make_alloc(index=0, node="n1"), make_alloc(index=1, node="n2")
    b0 = make_alloc("logs", node="n1")
    store.save_allocations([a0, a1])
    store.save_allocations([b0])

    def ids(allocs: list[Allocation]) -> list[str]:
        return [a.id for a in allocs]

    assert store.get_allocation(a0.id) == a0
    assert ids(store.list_allocations()) == [a0.id, a1.id, b0.id]
    assert ids(store.list_allocations(job="shop")) == [a0.id, a1.id]
    assert ids(store.list_allocations(node="n1")) == [a0.id, b0.id]
    assert ids(store.list_allocations(job="shop", node="n2")) == [a1.id]
    assert store.list_allocations(job="other") == []


def test_replacing_an_allocation_keeps_its_place_and_saves_both_at_once(store: Store) -> None:
    submit(store)
    old, other = make_alloc(index=0), make_alloc(index=1)
    store.save_allocations([old, other])
    old.transition(AllocStatus.RUNNING, "started", now=T0)
    old.transition(AllocStatus.LOST, "node n1 is down", now=T0)
    new = make_alloc(index=0, node="n2")
    new.replaces, old.replaced_by = old.id, new.id

    store.save_allocations([old, new])

    listed = store.list_allocations()
    assert [a.id for a in listed] == [old.id, other.id, new.id]
    assert (listed[0].status, listed[0].replaced_by) == (AllocStatus.LOST, new.id)
    assert [e.status for e in listed[0].events] == [AllocStatus.RUNNING, AllocStatus.LOST]
    assert listed[2].replaces == old.id


def test_allocations_of_an_unknown_job_are_refused_all_together(store: Store) -> None:
    submit(store)
    known, unknown = make_alloc(), make_alloc("ghost")
    with pytest.raises(NotFound, match="job ghost not found"):
        store.save_allocations([known, unknown])
    assert store.list_allocations() == []
    assert store.find_allocation(known.id) is None
    with pytest.raises(NotFound, match=f"allocation {known.id} not found"):
        store.get_allocation(known.id)


def test_deleting_a_job_purges_its_versions_allocations_and_deployments(store: Store) -> None:
    submit(store, "shop")
    kept_version = submit(store, "logs")
    kept = make_alloc("logs")
    store.save_allocations([make_alloc("shop"), kept])
    kept_deployment = Deployment(job="logs", version=1)
    store.save_deployment(Deployment(job="shop", version=1))
    store.save_deployment(kept_deployment)

    store.delete_job("shop")

    assert store.find_job("shop") is None
    assert store.list_allocations() == [kept]
    assert store.list_deployments() == [kept_deployment]
    assert store.job_versions("logs") == [kept_version]
    # Submitted again, the job starts over with no history.
    submit(store, "shop")
    assert len(store.job_versions("shop")) == 1
    assert store.list_allocations(job="shop") == []


def test_deployments_are_saved_replaced_in_place_and_listed_oldest_first(store: Store) -> None:
    submit(store, "shop")
    submit(store, "logs")
    first = Deployment(job="shop", version=1, created_at=T0)
    other = Deployment(job="logs", version=1)
    second = Deployment(job="shop", version=2, from_version=1, revert=True)
    for d in (first, other, second):
        store.save_deployment(d)
    first.status, first.status_reason = DeploymentStatus.SUCCESSFUL, "all healthy"
    first.groups["web"] = GroupDeployment(desired=3, healthy=3, canaries=["c0"])
    store.save_deployment(first)

    assert store.list_deployments(job="shop") == [first, second]
    assert store.list_deployments() == [first, other, second]
    assert store.find_deployment(first.id) == first
    assert store.find_deployment("nope") is None
    stored = store.list_deployments(job="shop")[0]
    stored.groups.clear()  # a copy: the store's is untouched
    assert store.find_deployment(first.id) == first


def test_a_deployment_of_an_unknown_job_is_refused(store: Store) -> None:
    with pytest.raises(NotFound, match="job ghost not found"):
        store.save_deployment(Deployment(job="ghost", version=1))
    assert store.list_deployments() == []


def test_returned_and_saved_jobs_and_allocations_are_copies(store: Store) -> None:
    submit(store)
    alloc = make_alloc()
    store.save_allocations([alloc])

    alloc.node = "elsewhere"
    store.get_allocation(alloc.id).tasks.clear()
    store.list_allocations()[0].events.append(alloc.transition(AllocStatus.RUNNING, "x", now=T0))
    store.get_job("shop").stopped = True
    store.job_versions("shop")[0].number = 7

    stored = store.get_allocation(alloc.id)
    assert (stored.node, stored.status, stored.events) == ("n1", AllocStatus.PENDING, [])
    assert not store.get_job("shop").stopped
    assert store.get_job_version("shop", 1).number == 1


def test_concurrent_allocation_writers_lose_nothing(store: Store) -> None:
    submit(store)
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)

    def writer(worker: int) -> list[str]:
        start.wait(timeout=30)
        saved = []
        for i in range(per_thread):
            alloc = make_alloc(index=i, node=f"n{worker}")
            store.save_allocations([alloc])
            saved.append(alloc.id)
        return saved

    with ThreadPoolExecutor(threads) as pool:
        written = [f.result() for f in [pool.submit(writer, w) for w in range(threads)]]

    assert len(store.list_allocations(job="shop")) == threads * per_thread
    for worker, ids in enumerate(written):
        assert [a.id for a in store.list_allocations(node=f"n{worker}")] == ids


def test_a_closed_store_refuses_jobs(store: Store) -> None:
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.list_jobs()
    with pytest.raises(RuntimeError, match="closed"):
        store.list_allocations()


# --- SQLite only ---------------------------------------------------------------------------


def test_sqlite_keeps_jobs_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cube.db"
    first = SqliteStore(path)
    v1 = submit(first)
    alloc = make_alloc()
    first.save_allocations([alloc])
    deployment = Deployment(job="shop", version=1, groups={"web": GroupDeployment(desired=3)})
    first.save_deployment(deployment)
    first.close()

    reopened = SqliteStore(path)
    try:
        assert reopened.get_job("shop") == Job(id="shop", created_at=T0, updated_at=T0)
        assert reopened.job_versions("shop") == [v1]
        assert reopened.list_allocations() == [alloc]
        assert reopened.list_deployments() == [deployment]
    finally:
        reopened.close()


def test_sqlite_adds_the_job_tables_to_a_database_written_before_jobs(tmp_path: Path) -> None:
    """A cube.db of schema version 1 without job tables opens, keeps its tasks, gains jobs."""
    path = tmp_path / "cube.db"
    task = make_task()
    with closing(sqlite3.connect(path)) as conn:
        for statement in _SCHEMA:  # the schema as it was before jobs
            conn.execute(statement)
        conn.execute(
            "INSERT INTO tasks (id, seq, name, state, node, data) VALUES (?, 1, ?, ?, NULL, ?)",
            (task.id, task.name, task.state.value, task.model_dump_json()),
        )
        conn.commit()

    store = SqliteStore(path)
    try:
        assert store.list_tasks() == [task]
        submit(store)
        assert [j.id for j in store.list_jobs()] == ["shop"]
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"tasks", "jobs", "job_versions", "allocations", "deployments"} <= tables
