"""``cube exec``: a command in a running task's container, CLI -> manager -> worker ->
Docker over WebSockets, with real processes and real containers."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cube.api.guard import HEADER_TIMEOUT
from tests.support.agents import AgentProcess
from tests.support.jobs import cube, job_file, wait_allocs
from tests.support.manager_http import submit, wait_node, wait_running

pytestmark = pytest.mark.docker


def exec_args(manager: AgentProcess, *args: str) -> list[str]:
    """The command line of ``cube exec ARGS`` against ``manager`` (named before the ``--``)."""
    return [sys.executable, "-m", "cube", "exec", "--manager", manager.url, *args]


def cube_exec(
    manager: AgentProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cube exec ARGS`` against ``manager``."""
    return subprocess.run(
        exec_args(manager, *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_node(start_manager: Any, start_worker: Any) -> tuple[AgentProcess, AgentProcess]:
    """A manager with one worker that joined it."""
    manager: AgentProcess = start_manager()
    worker: AgentProcess = start_worker("--manager", manager.url)
    wait_node(manager.url, worker.name, "ready")
    return manager, worker


@pytest.fixture
def cluster(start_manager: Any, start_worker: Any) -> tuple[AgentProcess, str]:
    """A manager, one worker, and a running sleeper task named ``box``: its ID."""
    manager, _ = one_node(start_manager, start_worker)
    task_id = submit(manager.url, "box")
    wait_running(manager.url, [task_id])
    return manager, task_id


def test_output_streams_and_the_exit_code_come_back(cluster: tuple[AgentProcess, str]) -> None:
    manager, task_id = cluster
    ran = cube_exec(manager, task_id, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (ran.returncode, ran.stdout, ran.stderr) == (3, "out\n", "err\n")
    by_name = cube_exec(manager, "box", "--", "cat", "/etc/hostname")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.strip()
    # The manager logs who ran what where: the program, not its arguments.
    [logged, _] = [line for line in manager.logs().splitlines() if " exec " in f" {line} "]
    assert f"task={task_id}" in logged
    assert "command=sh" in logged
    assert "echo" not in logged


def test_a_command_outlives_the_servers_header_timeout(cluster: tuple[AgentProcess, str]) -> None:
    """The upgraded connection is the WebSocket's: the timer that closes a connection which
    sends no request within HEADER_TIMEOUT must not close it (nor any proxy on the way)."""
    manager, task_id = cluster
    script = f"sleep {HEADER_TIMEOUT + 1:g}; echo still here"
    ran = cube_exec(manager, task_id, "--", "sh", "-c", script)
    assert (ran.returncode, ran.stdout) == (0, "still here\n"), ran.stderr


def test_a_reader_that_stops_early_ends_the_cli_without_a_traceback(
    cluster: tuple[AgentProcess, str],
) -> None:
    manager, task_id = cluster
    line = shlex.join(exec_args(manager, task_id, "--", "yes"))
    piped = subprocess.run(
        f"{line} | head -n 2; echo status ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.stdout == "y\ny\nstatus 141\n", piped.stderr
    assert piped.stderr == ""


def test_stdin_reaches_the_command_and_its_end_ends_it(
    cluster: tuple[AgentProcess, str],
) -> None:
    manager, task_id = cluster
    piped = cube_exec(
        manager, task_id, "-i", "--", "sh", "-c", "cat; echo done", stdin="hi\nthere\n"
    )
    assert (piped.returncode, piped.stdout) == (0, "hi\nthere\ndone\n"), piped.stderr


def test_tty_gives_the_command_a_terminal(cluster: tuple[AgentProcess, str]) -> None:
    manager, task_id = cluster
    with_tty = cube_exec(manager, task_id, "-t", "--", "tty")
    assert with_tty.returncode == 0, with_tty.stderr
    assert with_tty.stdout.startswith("/dev/pts/")
    without = cube_exec(manager, task_id, "--", "tty")
    assert without.returncode == 1
    assert without.stdout.strip() == "not a tty"


def test_in_a_terminal_the_commands_terminal_takes_its_size_and_follows_a_resize(
    cluster: tuple[AgentProcess, str],
) -> None:
    """``-it`` from a terminal of 33 rows and 99 columns: the command sees that size, then
    the new one after the terminal changes (SIGWINCH).

    The first look waits a second: an engine older than API 1.42 (Docker 20.10) cannot
    be given the size with the exec, so it is set just after the command started."""
    manager, task_id = cluster
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
    # After the line: the size once it is no longer the first (the resize is on its way).
    script = (
        'sleep 1; stty size; read line; while [ "$(stty size)" = "33 99" ]; do :; done; stty size'
    )
    proc = subprocess.Popen(
        exec_args(manager, task_id, "-it", "--", "sh", "-c", script),
        stdin=child,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    seen = bytearray()
    try:
        read_until(parent, seen, b"33 99")
        fcntl.ioctl(parent, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        os.write(parent, b"go\r")
        read_until(parent, seen, b"40 120")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(parent)


def read_until(fd: int, seen: bytearray, wanted: bytes, *, timeout: float = 30) -> None:
    """Read the terminal's output into ``seen`` until ``wanted`` is in it."""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        assert time.monotonic() < deadline, f"no {wanted!r} in {bytes(seen)!r}"
        if select.select([fd], [], [], 0.5)[0]:
            seen += os.read(fd, 4096)


def test_a_task_that_ended_is_refused_in_one_line(cluster: tuple[AgentProcess, str]) -> None:
    manager, task_id = cluster
    assert cube(manager, "stop", task_id).returncode == 0
    refused = cube_exec(manager, task_id, "--", "echo", "hi")
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith("Error: task box (")
    assert "is not running (Completed" in line


def test_unknown_targets_and_a_wrong_token_are_refused(
    cluster: tuple[AgentProcess, str],
) -> None:
    manager, _ = cluster
    unknown = cube_exec(manager, "nosuch", "--", "true")
    assert unknown.returncode == 1
    [line] = unknown.stderr.splitlines()
    assert line.startswith("Error: task or allocation nosuch not found")

    bad = cube_exec(manager, "box", "--token", "wrong-token-0123456789", "--", "true")
    assert bad.returncode == 1
    assert "unauthorized: invalid token" in bad.stderr
    ws_url = manager.url.replace("http://", "ws://") + "/v1/exec/box?cmd=true"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, additional_headers={"Authorization": "Bearer wrong-token-0123"})
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as anonymous:
        connect(ws_url)
    assert anonymous.value.response.status_code == 401


def test_an_allocation_is_a_target_and_its_task_is_chosen_with_task(
    start_manager: Any, start_worker: Any, tmp_path: Path
) -> None:
    manager, _ = one_node(start_manager, start_worker)
    assert cube(manager, "job", "run", str(job_file(tmp_path, "duo", count=1))).returncode == 0
    [alloc] = wait_allocs(manager.url, "duo", 1)

    ran = cube_exec(manager, "duo.web[0]", "--task", "side", "--", "sh", "-c", "echo $CUBE_TASK")
    assert (ran.returncode, ran.stdout) == (0, "side\n"), ran.stderr
    by_id = cube_exec(
        manager, alloc["id"][:8], "--task", "api", "--", "sh", "-c", "echo $CUBE_TASK"
    )
    assert (by_id.returncode, by_id.stdout) == (0, "api\n"), by_id.stderr

    which = cube_exec(manager, "duo.web[0]", "--", "true")
    assert which.returncode == 2
    assert "task: allocation duo.web[0] has tasks api, side: choose one with --task" in which.stderr
    nosuch = cube_exec(manager, "duo.web[0]", "--task", "db", "--", "true")
    assert nosuch.returncode == 1
    assert "allocation duo.web[0] has no task db (api, side)" in nosuch.stderr


def test_a_worker_killed_during_the_command_ends_the_exec_in_one_line(
    start_manager: Any, start_worker: Any
) -> None:
    manager, worker = one_node(start_manager, start_worker)
    task_id = submit(manager.url, "box")
    wait_running(manager.url, [task_id])
    proc = subprocess.Popen(
        exec_args(manager, task_id, "--", "sh", "-c", "echo started; sleep 600"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        worker.kill()
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 1
    [line] = err.splitlines()
    assert line.startswith("Error: exec broke off: lost the task's node")
