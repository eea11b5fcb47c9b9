"""The SQLite store: the default, survives restarts, shareable between processes.

Concurrency model, and why:

* One connection per thread (:class:`threading.local`): a :class:`sqlite3.Connection`
  must not run statements from two threads at once, and a per-thread connection
  needs no lock of our own around every call.
* WAL journal mode: readers never block the writer, nor the writer the readers.
  ``synchronous=NORMAL`` is the setting WAL is meant for: a power cut can lose the
  last commits, never corrupt the file.
* Autocommit connections (``isolation_level=None``) and every write inside an
  explicit ``BEGIN IMMEDIATE``. A deferred transaction that reads and then writes
  must upgrade its lock, and if another connection wrote in between SQLite answers
  SQLITE_BUSY at once, without waiting for the busy timeout. Taking the write lock
  up front means writers queue on ``busy_timeout`` instead, whether they are threads
  of this process or other processes.

Each value is stored as the JSON of its pydantic model; the few columns next to it
(state, node, ...) exist to filter and order in SQL.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cube.errors import NotFound, StoreUnavailable
from cube.node import Node
from cube.store.failures import MOVE_IT_AWAY, explained, store_error
from cube.store.files import private
from cube.store.sqlite_jobs import SqliteJobTables, create_job_tables
from cube.task.model import Task, TaskEvent
from cube.task.spec import KEEP_SECRETS
from cube.task.state import State

#: Stored in ``PRAGMA user_version``; bump it and add a migration when the schema changes.
SCHEMA_VERSION = 1

BUSY_TIMEOUT_SECONDS = 10.0

_SCHEMA = (
    # seq orders tasks oldest first; an upsert keeps it, so replacing a task keeps its place.
    """CREATE TABLE tasks (
        id    TEXT PRIMARY KEY,
        seq   INTEGER NOT NULL UNIQUE,
        name  TEXT NOT NULL,
        state TEXT NOT NULL,
        node  TEXT,
        data  TEXT NOT NULL
    )""",
    "CREATE INDEX tasks_state ON tasks (state)",
    "CREATE INDEX tasks_node ON tasks (node)",
    """CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL REFERENCES tasks (id),
        data    TEXT NOT NULL
    )""",
    "CREATE INDEX events_task_id ON events (task_id)",
    """CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL
    )""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_UPSERT_TASK = """
    INSERT INTO tasks (id, seq, name, state, node, data)
    VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks), ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET
        name = excluded.name, state = excluded.state, node = excluded.node, data = excluded.data
"""


#: How a write begins, ends and is undone: alone, or inside a batch (see SqliteStore.batch).
_TRANSACTION: tuple[str, str, tuple[str, ...]] = ("BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",))
_SAVEPOINT: tuple[str, str, tuple[str, ...]] = (
    "SAVEPOINT write",
    "RELEASE write",
    ("ROLLBACK TO write", "RELEASE write"),
)


class SqliteStore(SqliteJobTables):
    """A :class:`~cube.store.base.Store` in one SQLite file; safe across threads and processes.

    Jobs, versions and allocations are in :class:`~cube.store.sqlite_jobs.SqliteJobTables`.

    Call :meth:`close` once no other thread uses the store any more: it closes the
    connections of every thread.
    """

    #: Calls write to a disk, and wait up to BUSY_TIMEOUT_SECONDS for another's lock.
    blocks = True

    def __init__(self, path: str | Path) -> None:
        if str(path) == ":memory:":
            # Each thread would get its own, empty, database.
            raise ValueError("SqliteStore needs a file; use MemoryStore for an in-memory store")
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns and _closed
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        try:
            with _opening(self.path.parent):
                self._open()
        except sqlite3.Error as exc:
            self.close()
            raise store_error(self.path, exc) from exc
        except OSError as exc:  # the directory lock, the mode of the files
            self.close()
            raise StoreUnavailable(
                f"cannot open {self.path}: {exc.strerror} ({exc.filename})"
            ) from exc
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Check the file, make it private, then set it up: called under :func:`_opening`.

        A file that exists but is empty is refused: it held a cluster once (SQLite writes
        its header before any data), and starting an empty cluster over it silently would
        hide the loss. A file that exists is checked page by page (``quick_check``, a few
        milliseconds for thousands of tasks), so a truncated file is refused at start
        rather than failing reads of some tasks later.
        """
        existed = self.path.exists()
        if existed and self.path.stat().st_size == 0:
            raise StoreUnavailable(
                f"{self.path} is empty (0 bytes) though it should hold the saved state;"
                f" {MOVE_IT_AWAY}"
            )
        conn = self._conn()  # creates the file if missing
        private(self.path)
        self._enable_wal()
        for suffix in ("-wal", "-shm"):  # SQLite gives them the file's mode; older ones: now
            if (extra := self.path.with_name(self.path.name + suffix)).exists():
                private(extra)
        if existed:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise StoreUnavailable(
                    f"{self.path} is damaged ({'; '.join(problems)}); {MOVE_IT_AWAY}"
                )
        self._create_schema()

    # --- tasks -----------------------------------------------------------------------------
    @explained
    def save_task(self, task: Task, events: Sequence[TaskEvent] = ()) -> None:
        data = task.model_dump_json(context=KEEP_SECRETS)  # the file is 0600
        with self._write() as conn:
            conn.execute(_UPSERT_TASK, (task.id, task.name, task.state.value, task.node, data))
            self._insert_events(conn, task.id, events)

    @explained
    def get_task(self, task_id: str) -> Task:
        task = self.find_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return task

    @explained
    def find_task(self, task_id: str) -> Task | None:
        row = self._conn().execute("SELECT data FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else Task.model_validate_json(row[0])

    @explained
    def list_tasks(
        self, *, node: str | None = None, states: Collection[State] | None = None
    ) -> list[Task]:
        clauses: list[str] = []
        params: list[str] = []
        if node is not None:
            clauses.append("node = ?")
            params.append(node)
        if states is not None:
            if not states:
                return []
            clauses.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(State(state).value for state in states)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn().execute(f"SELECT data FROM tasks {where} ORDER BY seq", params)
        return [Task.model_validate_json(data) for (data,) in rows]

    @explained
    def delete_task(self, task_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM events WHERE task_id = ?", (task_id,))
            if conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount == 0:
                raise NotFound(f"task {task_id} not found")

    @explained
    def add_events(self, task_id: str, events: Sequence[TaskEvent]) -> None:
        with self._write() as conn:
            self._check_task_exists(conn, task_id)
            self._insert_events(conn, task_id, events)

    @explained
    def task_events(self, task_id: str) -> list[TaskEvent]:
        with self._read() as conn:
            self._check_task_exists(conn, task_id)
            rows = conn.execute(
                "SELECT data FROM events WHERE task_id = ? ORDER BY seq", (task_id,)
            ).fetchall()
        return [TaskEvent.model_validate_json(data) for (data,) in rows]

    # --- nodes -----------------------------------------------------------------------------
    @explained
    def save_node(self, node: Node) -> None:
        data = node.model_dump_json()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO nodes (name, data) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                (node.name, data),
            )

    @explained
    def get_node(self, name: str) -> Node:
        row = self._conn().execute("SELECT data FROM nodes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"node {name} not found")
        return Node.model_validate_json(row[0])

    @explained
    def list_nodes(self) -> list[Node]:
        rows = self._conn().execute("SELECT data FROM nodes ORDER BY name")
        return [Node.model_validate_json(data) for (data,) in rows]

    @explained
    def delete_node(self, name: str) -> None:
        with self._write() as conn:
            if conn.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"node {name} not found")

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection of every thread; later calls raise RuntimeError."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for _, conn in conns:
            conn.close()

    # --- internals -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        if self._closed:
            raise RuntimeError("the store is closed")
        conn = self._connect()
        with self._lock:
            if self._closed:
                conn.close()
                raise RuntimeError("the store is closed")
            self._close_orphans()
            self._conns.append((threading.current_thread(), conn))
        self._local.conn = conn
        return conn

    def _close_orphans(self) -> None:
        """Close the connections of threads that have exited (called with the lock held).

        Thread pools (anyio's, behind FastAPI) retire idle threads and start new ones;
        without this, every retired thread would leave an open connection behind.
        """
        alive = []
        for thread, conn in self._conns:
            if thread.is_alive():
                alive.append((thread, conn))
            else:
                conn.close()
        self._conns = alive

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_SECONDS,  # sets the busy handler: wait for locks, don't fail
            isolation_level=None,  # autocommit: we say BEGIN ourselves, see the module docstring
            check_same_thread=False,  # only so that close() may close other threads' connections
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self) -> None:
        """Switch the file to WAL mode, which sticks to the file once set.

        Switching needs an exclusive lock, and SQLite answers SQLITE_BUSY at once
        instead of calling the busy handler when it cannot get it, which happens
        when several processes open a new file together. So retry until the timeout.
        """
        conn = self._conn()
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                if mode != "wal":
                    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode != "wal":  # e.g. a file system without shared memory
            raise StoreUnavailable(
                f"{self.path}: SQLite refused WAL journal mode (got {mode!r});"
                " keep the data dir on a local file system"
            )

    def _create_schema(self) -> None:
        # Inside a write transaction, so that two processes opening a new file at once
        # cannot both create the tables.
        with self._write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
            elif version != SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"{self.path} has schema version {version};"
                    f" this version of Cube reads version {SCHEMA_VERSION}"
                )
            create_job_tables(conn)  # added to version-1 files too: see sqlite_jobs

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for this thread's writes in the block (see Store.batch).

        Each write inside is a savepoint of it, so that one that fails is undone alone,
        as it would be in a transaction of its own. With WAL and ``synchronous=NORMAL``
        a commit costs no fsync, but it does write the pages it changed to the log:
        placing 2,000 allocations (a record each, and one per task) took a quarter of
        the job service's CPU in commits of one record.
        """
        if getattr(self._local, "batch", False):  # nested: the outermost block commits
            yield
            return
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        self._local.batch = True
        try:
            yield
        finally:  # an error in the block keeps what it wrote, as writes one by one would
            self._local.batch = False
            self._commit(conn)

    def _commit(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:  # SQLite rolled it back itself (a full disk)
            raise StoreUnavailable(f"{self.path}: a batch of writes was lost; check its disk")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise store_error(self.path, exc) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the write lock is taken at BEGIN, so it never needs upgrading.

        Inside :meth:`batch`, a savepoint of the batch's transaction instead.
        """
        conn = self._conn()
        begin, end, undo = _TRANSACTION
        if getattr(self._local, "batch", False) and conn.in_transaction:
            begin, end, undo = _SAVEPOINT
        conn.execute(begin)
        try:
            yield conn
            conn.execute(end)
        except BaseException:
            if conn.in_transaction:
                for statement in undo:
                    conn.execute(statement)
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, for reads of several statements that must see one snapshot."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")  # nothing was written; this only ends the snapshot

    @staticmethod
    def _check_task_exists(conn: sqlite3.Connection, task_id: str) -> None:
        if conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
            raise NotFound(f"task {task_id} not found")

    @staticmethod
    def _insert_events(conn: sqlite3.Connection, task_id: str, events: Sequence[TaskEvent]) -> None:
        conn.executemany(
            "INSERT INTO events (task_id, data) VALUES (?, ?)",
            [(task_id, event.model_dump_json()) for event in events],
        )


@contextmanager
def _opening(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` while a store in it is opened.

    Processes that open a new file together must not see one another's empty file,
    just created and not yet set up, as an empty store that existed (see ``_open``).
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
