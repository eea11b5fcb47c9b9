"""``cube top`` against a real ``cube dev``, as a user runs it (its frames as pure functions
are tests/unit/test_top_frame.py's)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from typing import Any

import pytest

from cube.cli.top import EMPTY, FULL
from tests.support import api
from tests.support.agents import AgentProcess
from tests.support.cli import cube, ok
from tests.support.engine import IMAGE
from tests.support.ports import free_port
from tests.support.waiting import wait_for


# --- against a real manager -----------------------------------------------------------------------
def run_sleeper(dev: AgentProcess, name: str) -> str:
    spec = {"name": name, "image": IMAGE, "command": ["sleep", "600"], "resources": {"cpu": 0.5}}
    response = api.post(f"{dev.url}/v1/tasks", json=spec)
    assert response.status_code == 201, response.text
    task_id = str(response.json()["id"])
    wait_for(
        lambda: api.get(f"{dev.url}/v1/tasks/{task_id}").json()["state"] == "running",
        what=f"{name} running",
    )
    return task_id


@pytest.mark.docker
def test_top_once_and_json_show_the_nodes_and_running_tasks(start_dev: Any) -> None:
    dev = start_dev("--cpu", "2")
    task_id = run_sleeper(dev, "watched")
    screen = ok(cube("top", "--once", addr=dev.url))
    lines = screen.splitlines()
    assert lines[0].startswith(f"{dev.url}  ")
    assert lines[0].endswith("nodes: 1 ready · tasks: 1 running")
    [node_row] = [line for line in lines if line.startswith(dev.name)]
    assert f"{FULL * 2}{EMPTY * 8} 0.5/2.0" in node_row
    [task_row] = [line for line in lines if line.startswith(task_id[:12])]
    assert "watched" in task_row
    assert "Running" in task_row

    snapshot = json.loads(ok(cube("top", "-o", "json", addr=dev.url)))
    assert [n["name"] for n in snapshot["nodes"]] == [dev.name]
    assert snapshot["nodes"][0]["allocated"]["cpu"] == 0.5
    assert [(t["id"], t["state"]) for t in snapshot["tasks"]] == [(task_id, "running")]


@pytest.mark.docker
def test_top_refreshes_until_interrupted(start_dev: Any) -> None:
    """Without a terminal, a frame after the other: a task run meanwhile appears."""
    dev = start_dev()
    top = subprocess.Popen(
        [sys.executable, "-m", "cube", "top", "-n", "0.2", "--manager", dev.url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert top.stdout is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(top.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("tasks: none" in line for line in seen), what="a first frame")
        run_sleeper(dev, "later")
        wait_for(lambda: any("tasks: 1 running" in line for line in seen), what="a new frame")
        assert any(" later " in line for line in seen)
    finally:
        top.terminate()
        top.wait(timeout=10)
        reader.join(timeout=10)
        top.stdout.close()


@pytest.mark.docker
def test_top_in_a_terminal_redraws_its_frame_in_place(start_dev: Any) -> None:
    dev = start_dev()
    run_sleeper(dev, "drawn")
    leader, follower = pty.openpty()
    top = subprocess.Popen(
        [sys.executable, "-m", "cube", "top", "-n", "0.2", "--manager", dev.url],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"},
    )
    os.close(follower)
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: top exited
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Rich's Live moves the cursor up over the last frame and draws the next one.
        cursor_up = b"\x1b[1A"
        wait_for(lambda: screen.count(b"tasks: 1 running") >= 3, what="three frames")
        assert cursor_up in screen
        assert b"drawn" in screen
    finally:
        top.terminate()
        top.wait(timeout=10)
        reader.join(timeout=10)
        os.close(leader)


def test_top_has_help_refuses_a_bad_interval_and_says_when_no_manager_answers() -> None:
    helped = ok(cube("top", "--help"))
    assert "Example:" in helped
    assert "cube top --once" in helped
    bad = cube("top", "-n", "0")
    assert bad.returncode == 2
    assert "Invalid value for '-n' / '--interval'" in bad.stderr
    gone = cube("top", "--once", addr=f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1
    [said] = gone.stderr.strip().splitlines()
    assert "cannot reach the manager" in said
