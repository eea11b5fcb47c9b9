"""The store under faults, with real agent processes: a full disk, damaged files, file modes.

A full disk is a real tmpfs of a few MiB mounted as an agent's data dir (unmounted after
the test) and filled by a file; damaged stores are real files broken the way disks and
people break them; modes are read from the files the agents left.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.cluster import stop, submit, tasks_of, wait_nodes, wait_state
from tests.support.engine import sleeper
from tests.support.invariants import assert_converges
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.docker


# --- a small file system ---------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted after the test (after the agents using it are killed:
    request it before start_manager/start_worker)."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` up to the last byte; returns the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * 65536
        while chunk:
            try:
                os.write(fd, chunk)
            except OSError:  # ENOSPC: smaller pieces, down to one byte
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def health(agent: AgentProcess) -> dict[str, Any]:
    response = api.get(f"{agent.url}/v1/health", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_full_disk_refuses_tasks_with_503_and_shows_nothing_unsaved_then_resumes(
    small_fs: Path, start_manager: Any, start_worker: Any
) -> None:
    data = small_fs / "manager"
    manager = start_manager("--data-dir", str(data))
    worker = start_worker("--manager", manager.url)
    wait_nodes(manager, [worker])
    before = submit(manager, sleeper("before"))
    wait_state(manager, before, "running")

    filler = fill(small_fs)
    # SQLite may still fit a commit or two into pages its log already holds: submit until
    # one is refused. Every task accepted meanwhile was saved, and must run.
    accepted: list[str] = []
    refused = None
    for i in range(100):
        task_id = f"full-{i}-{uuid.uuid4().hex[:6]}"
        response = api.post(
            f"{manager.url}/v1/tasks", json={**sleeper(f"full{i}"), "id": task_id}, timeout=30
        )
        if response.status_code == 503:
            refused = task_id, response.json()
            break
        assert response.status_code == 201, response.text
        accepted.append(task_id)
    assert refused is not None, "a full disk never refused a task"
    refused_id, body = refused
    assert body["error"] == "store_full"
    assert body["message"] == f"cannot save: disk full at {data / 'cube.db'}"
    assert refused_id not in tasks_of(manager)
    assert api.get(f"{manager.url}/v1/tasks/{refused_id}", timeout=10).status_code == 404

    filler.unlink()
    after = submit(manager, sleeper("after"))
    expected = dict.fromkeys([before, *accepted, after], "running")
    assert_converges(manager.url, [worker.name], expected, timeout=60)
    # ... and what was shown was saved: a restarted manager knows the same tasks.
    manager.kill()
    manager.start()
    assert set(tasks_of(manager)) == set(expected)


def test_a_worker_joining_a_manager_whose_disk_is_full_joins_once_space_is_back(
    small_fs: Path, start_manager: Any, start_worker: Any
) -> None:
    data = small_fs / "manager"
    manager = start_manager("--data-dir", str(data))
    waiting = submit(manager, sleeper("waiting"))  # no node yet: Pending
    filler = fill(small_fs)

    worker = start_worker("--manager", manager.url)
    message = f"cannot save: disk full at {data / 'cube.db'}"
    wait_for(lambda: message in worker.logs(), timeout=30, what="the manager to refuse the join")
    assert api.get(f"{manager.url}/v1/nodes", timeout=10).json() == []  # not saved: not shown

    filler.unlink()
    wait_nodes(manager, [worker])
    assert_converges(manager.url, [worker.name], {waiting: "running"}, timeout=60)


def test_full_disk_under_a_worker_restarts_its_crashed_runner_and_reports_it(
    small_fs: Path, start_manager: Any, start_worker: Any
) -> None:
    manager = start_manager()
    worker = start_worker("--manager", manager.url, "--data-dir", str(small_fs / "worker"))
    wait_nodes(manager, [worker])
    # Exits every second and is restarted: each exit is a change the worker must save.
    flapping = submit(
        manager,
        {
            "name": "flapping",
            "image": "cube-busybox:latest",
            "command": ["sleep", "1"],
            "stop_timeout": "1s",
            "restart": {"policy": "always", "delay": "0.1s", "max_delay": "0.1s"},
        },
    )
    wait_state(manager, flapping, "running")

    filler = fill(small_fs)
    loop = f"task {flapping}"

    def troubled() -> dict[str, Any] | None:
        answer = health(worker)
        return answer if loop in answer["loops"] else None

    answer = wait_for(troubled, timeout=60, what="the worker's health to name the crashed loop")
    assert answer["status"] == "degraded"
    assert answer["loops"][loop]["restarts"] >= 1
    message = f"cannot save: disk full at {small_fs / 'worker' / 'cube.db'}"
    assert answer["loops"][loop]["last_error"] == message
    crash = next(line for line in worker.logs().splitlines() if "background loop crashed;" in line)
    # One line, with the traceback in its field.
    assert "traceback=" in crash
    assert "Traceback (most recent call last):\\n" in crash
    assert "cube.errors.StoreFull: " + message in crash

    # A task sent to the worker meanwhile is refused by it, and waits.
    waiting = submit(manager, sleeper("waiting"))
    reason = f"could not start on {worker.name}: {message}"

    def refused() -> bool:
        task = api.get(f"{manager.url}/v1/tasks/{waiting}", timeout=10).json()
        return bool(task["state"] == "pending" and task["reason"] == reason)

    wait_for(refused, timeout=30, what="the task to wait with the worker's reason")

    filler.unlink()
    restarts = task_restarts(manager, flapping)
    wait_for(
        lambda: task_restarts(manager, flapping) > restarts + 2,
        timeout=60,
        what="the task to be restarted again once space is back",
    )
    after = submit(manager, sleeper("after"))
    assert stop(manager, flapping).status_code == 200
    expected = {flapping: "completed", after: "running", waiting: "running"}
    assert_converges(manager.url, [worker.name], expected, timeout=60)


def task_restarts(manager: AgentProcess, task_id: str) -> int:
    return int(api.get(f"{manager.url}/v1/tasks/{task_id}", timeout=10).json()["restarts"])


# --- damaged store files -------------------------------------------------------------------------
def run_agent(role: str, data: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run ``cube manager`` or ``cube worker`` on ``data``, expecting it to refuse to start."""
    args = [sys.executable, "-m", "cube", role, "--port", str(port), "--data-dir", str(data)]
    if role == "worker":
        args += ["--name", f"damaged-{uuid.uuid4().hex[:6]}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def good_store(data: Path) -> Path:
    """A real store with a task in it, as an agent leaves it."""
    from cube.store import SqliteStore
    from cube.task.model import Task
    from cube.task.spec import TaskSpec

    store = SqliteStore(data / "cube.db")
    for i in range(200):
        store.save_task(Task(spec=TaskSpec(name=f"t{i}", image="cube-busybox:latest")))
    store.close()
    return data / "cube.db"


def damage(kind: str, db: Path) -> None:
    if kind == "corrupt":
        with db.open("r+b") as f:
            f.seek(0)
            f.write(os.urandom(4096))
    elif kind == "truncated":
        os.truncate(db, db.stat().st_size // 2)
    elif kind == "zero-length":
        os.truncate(db, 0)


@pytest.mark.parametrize("role", ["manager", "worker"])
@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("corrupt", "is damaged or not a Cube store (file is not a database)"),
        ("truncated", "is damaged"),
        ("zero-length", "is empty (0 bytes) though it should hold the saved state"),
    ],
)
def test_a_damaged_store_stops_the_agent_with_one_line_naming_the_file(
    tmp_path: Path, role: str, kind: str, says: str, docker_engine: None
) -> None:
    db = good_store(tmp_path)
    damage(kind, db)
    size = db.stat().st_size
    result = run_agent(role, tmp_path, free_port())
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {db} {says}"), result.stderr
    assert "move it away to start with an empty store" in last
    assert "Traceback" not in result.stderr
    assert db.stat().st_size == size  # left as it was found


@pytest.fixture
def read_only_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding a good store, then remounted read-only; unmounted after the test."""
    mount = tmp_path / "ro"
    mount.mkdir()
    # 0700: the data dir is private already, so the agent goes on to open the store.
    options = "size=8m,mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        good_store(mount)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("role", ["manager", "worker"])
def test_an_unwritable_store_stops_the_agent_with_one_line_naming_the_file(
    read_only_fs: Path, role: str, docker_engine: None
) -> None:
    result = run_agent(role, read_only_fs, free_port())
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.stderr
    assert str(read_only_fs) in last
    assert "read-only" in last.lower()
    assert "Traceback" not in result.stderr


# --- file modes ----------------------------------------------------------------------------------
def modes(directory: Path) -> dict[str, str]:
    """Every file and directory under ``directory`` (itself included) -> its mode, octal."""
    found = {".": oct(stat.S_IMODE(directory.stat().st_mode))}
    for current, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            path = Path(current, name)
            found[str(path.relative_to(directory))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def test_every_file_an_agent_leaves_in_its_data_dir_is_private(
    tmp_path: Path, start_manager: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager_dir = tmp_path / "manager-data"
    worker_dir = tmp_path / "worker-data"
    worker_dir.mkdir(mode=0o755)  # made by hand, as `mkdir` makes it
    worker_dir.chmod(0o755)
    (worker_dir / "notes").write_text("left here by the operator")
    (worker_dir / "notes").chmod(0o644)
    # Without these in the environment, the agents write the join token and the worker's
    # token to files in their data dirs (the cluster token stays the tests' own).
    monkeypatch.setenv("CUBE_JOIN_TOKEN", "")
    monkeypatch.setenv("CUBE_WORKER_TOKEN", "")
    manager = start_manager("--data-dir", str(manager_dir))
    join = (manager_dir / "join-token").read_text().strip()
    worker = start_worker(
        "--manager", manager.url, "--data-dir", str(worker_dir), "--join-token", join
    )
    wait_nodes(manager, [worker])
    task_id = submit(manager, {**sleeper("secret"), "env": {"PASSWORD": "hunter2"}})
    wait_state(manager, task_id, "running")

    for directory, token in ((manager_dir, "join-token"), (worker_dir, "token")):
        found = modes(directory)
        assert {"cube.db", "cube.db-wal", "cube.db-shm", token} <= set(found), found
        assert found.pop(".") == "0o700", directory
        assert set(found.values()) == {"0o600"}, found
    assert "data dir was open to other users; made it 0700" in worker.logs()
    assert "files in the data dir were open to other users" in worker.logs()
    assert_converges(manager.url, [worker.name], {task_id: "running"})


def test_a_data_dir_of_another_user_is_refused(tmp_path: Path, docker_engine: None) -> None:
    data = tmp_path / "theirs"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)  # nobody's
    result = run_agent("manager", data, free_port())
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {data} belongs to user id 65534"), result.stderr
    assert "refusing to use it" in last
    assert list(data.iterdir()) == []
