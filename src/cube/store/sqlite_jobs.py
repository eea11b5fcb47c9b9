"""Jobs, versions, allocations and deployments in the SQLite store: their tables and methods.

A mixin of :class:`~cube.store.sqlite.SqliteStore`, kept in a file of its own so that
the job tables read as one unit. It uses the store's connection and transactions
(``_conn``, ``_read``, ``_write``; see the concurrency notes in :mod:`cube.store.sqlite`).

The tables are created with ``CREATE ... IF NOT EXISTS`` each time a store opens, next
to the versioned schema rather than in it: a database written by a Cube without jobs
(schema version 1) gains them on its first open, and stays readable by that Cube.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from cube.errors import Conflict, NotFound
from cube.job.deployment import Deployment
from cube.job.model import Allocation, Job, JobVersion
from cube.store.base import found
from cube.store.failures import explained
from cube.task.spec import KEEP_SECRETS

JOB_TABLES = (
    # seq orders jobs and allocations oldest first; an upsert keeps it, as for tasks.
    """CREATE TABLE IF NOT EXISTS jobs (
        id   TEXT PRIMARY KEY,
        seq  INTEGER NOT NULL UNIQUE,
        data TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS job_versions (
        job       TEXT NOT NULL REFERENCES jobs (id),
        number    INTEGER NOT NULL,
        spec_hash TEXT NOT NULL,
        data      TEXT NOT NULL,
        PRIMARY KEY (job, number)
    )""",
    """CREATE TABLE IF NOT EXISTS allocations (
        id   TEXT PRIMARY KEY,
        seq  INTEGER NOT NULL UNIQUE,
        job  TEXT NOT NULL REFERENCES jobs (id),
        node TEXT,
        data TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deployments (
        id   TEXT PRIMARY KEY,
        seq  INTEGER NOT NULL UNIQUE,
        job  TEXT NOT NULL REFERENCES jobs (id),
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS deployments_job ON deployments (job)",
    "CREATE INDEX IF NOT EXISTS allocations_job ON allocations (job)",
    "CREATE INDEX IF NOT EXISTS allocations_node ON allocations (node)",
)

_UPSERT_JOB = """
    INSERT INTO jobs (id, seq, data)
    VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?)
    ON CONFLICT (id) DO UPDATE SET data = excluded.data
"""

_UPSERT_DEPLOYMENT = """
    INSERT INTO deployments (id, seq, job, data)
    VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments), ?, ?)
    ON CONFLICT (id) DO UPDATE SET data = excluded.data
"""

_UPSERT_ALLOC = """
    INSERT INTO allocations (id, seq, job, node, data)
    VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM allocations), ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET job = excluded.job, node = excluded.node, data = excluded.data
"""


def create_job_tables(conn: sqlite3.Connection) -> None:
    """Create the job tables if missing (called inside the store's schema transaction)."""
    for statement in JOB_TABLES:
        conn.execute(statement)


class SqliteJobTables:
    """The job half of :class:`~cube.store.sqlite.SqliteStore`."""

    if TYPE_CHECKING:  # provided by SqliteStore

        def _conn(self) -> sqlite3.Connection: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

        path: Path

    # --- jobs ------------------------------------------------------------------------------
    @explained
    def save_job(self, job: Job, versions: Sequence[JobVersion] = ()) -> None:
        data = job.model_dump_json()
        with self._write() as conn:
            for version in versions:
                row = conn.execute(
                    "SELECT spec_hash FROM job_versions WHERE job = ? AND number = ?",
                    (version.job, version.number),
                ).fetchone()
                if row is not None and row[0] != version.spec_hash:
                    raise Conflict(f"job {job.id} version {version.number} has another spec")
            conn.execute(_UPSERT_JOB, (job.id, data))
            conn.executemany(
                "INSERT INTO job_versions (job, number, spec_hash, data) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job, number) DO NOTHING",
                [
                    (v.job, v.number, v.spec_hash, v.model_dump_json(context=KEEP_SECRETS))
                    for v in versions
                ],
            )

    @explained
    def get_job(self, job_id: str) -> Job:
        return found(self.find_job(job_id), f"job {job_id}")

    @explained
    def find_job(self, job_id: str) -> Job | None:
        row = self._conn().execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.model_validate_json(row[0])

    @explained
    def list_jobs(self) -> list[Job]:
        rows = self._conn().execute("SELECT data FROM jobs ORDER BY seq")
        return [Job.model_validate_json(data) for (data,) in rows]

    @explained
    def delete_job(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM allocations WHERE job = ?", (job_id,))
            conn.execute("DELETE FROM deployments WHERE job = ?", (job_id,))
            conn.execute("DELETE FROM job_versions WHERE job = ?", (job_id,))
            if conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 0:
                raise NotFound(f"job {job_id} not found")

    @explained
    def job_versions(self, job_id: str) -> list[JobVersion]:
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFound(f"job {job_id} not found")
            rows = conn.execute(
                "SELECT data FROM job_versions WHERE job = ? ORDER BY number", (job_id,)
            ).fetchall()
        return [JobVersion.model_validate_json(data) for (data,) in rows]

    @explained
    def get_job_version(self, job_id: str, number: int) -> JobVersion:
        row = (
            self._conn()
            .execute("SELECT data FROM job_versions WHERE job = ? AND number = ?", (job_id, number))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"job {job_id} has no version {number}")
        return JobVersion.model_validate_json(row[0])

    # --- allocations -----------------------------------------------------------------------
    @explained
    def save_allocations(self, allocations: Sequence[Allocation]) -> None:
        rows = [(a.id, a.job, a.node, a.model_dump_json(context=KEEP_SECRETS)) for a in allocations]
        with self._write() as conn:
            for job in {a.job for a in allocations}:
                if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job,)).fetchone() is None:
                    raise NotFound(f"job {job} not found")
            conn.executemany(_UPSERT_ALLOC, rows)

    @explained
    def get_allocation(self, alloc_id: str) -> Allocation:
        return found(self.find_allocation(alloc_id), f"allocation {alloc_id}")

    @explained
    def find_allocation(self, alloc_id: str) -> Allocation | None:
        row = (
            self._conn()
            .execute("SELECT data FROM allocations WHERE id = ?", (alloc_id,))
            .fetchone()
        )
        return None if row is None else Allocation.model_validate_json(row[0])

    @explained
    def list_allocations(
        self, *, job: str | None = None, node: str | None = None
    ) -> list[Allocation]:
        clauses: list[str] = []
        params: list[str] = []
        if job is not None:
            clauses.append("job = ?")
            params.append(job)
        if node is not None:
            clauses.append("node = ?")
            params.append(node)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn().execute(f"SELECT data FROM allocations {where} ORDER BY seq", params)
        return [Allocation.model_validate_json(data) for (data,) in rows]

    # --- deployments -----------------------------------------------------------------------
    @explained
    def save_deployment(self, deployment: Deployment) -> None:
        with self._write() as conn:
            if (
                conn.execute("SELECT 1 FROM jobs WHERE id = ?", (deployment.job,)).fetchone()
                is None
            ):
                raise NotFound(f"job {deployment.job} not found")
            conn.execute(
                _UPSERT_DEPLOYMENT, (deployment.id, deployment.job, deployment.model_dump_json())
            )

    @explained
    def find_deployment(self, deployment_id: str) -> Deployment | None:
        row = (
            self._conn()
            .execute("SELECT data FROM deployments WHERE id = ?", (deployment_id,))
            .fetchone()
        )
        return None if row is None else Deployment.model_validate_json(row[0])

    @explained
    def list_deployments(self, *, job: str | None = None) -> list[Deployment]:
        if job is None:
            rows = self._conn().execute("SELECT data FROM deployments ORDER BY seq")
        else:
            rows = self._conn().execute(
                "SELECT data FROM deployments WHERE job = ? ORDER BY seq", (job,)
            )
        return [Deployment.model_validate_json(data) for (data,) in rows]
