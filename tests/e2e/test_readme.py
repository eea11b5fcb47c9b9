"""The README's main command, run as written: a fresh one-node cluster serving the example.

(The README's other command, ``bash scripts/test.sh``, is what CI runs to get here.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.engine import docker, remove_containers, unique_name
from tests.support.paths import ROOT
from tests.support.ports import free_port, free_port_pair

pytestmark = pytest.mark.docker


#: The README's quickstart holds these while it runs: the web task's host port and the
#: manager's and its worker's ports.
README_PORTS = (8080, 5555, 5556)


@pytest.fixture
def readme_ports_taken() -> Iterator[None]:
    """The machine as the README leaves it: the ports a running quickstart holds are
    taken (by that quickstart, or else by this fixture), and stay so."""
    with contextlib.ExitStack() as stack:
        for port in README_PORTS:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("0.0.0.0", port))  # as Docker publishes: on every address
                sock.listen()
            except OSError:
                pass  # taken already: a quickstart of the README runs, most likely
        yield


@pytest.fixture
def quickstart_env(
    docker_engine: None, readme_ports_taken: None, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """A cluster of its own beside the README's: its own data dir, ports and worker name
    (the script's environment variables), and no token from the test session: the script
    must find its own. Stops the cluster it started and removes its containers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUBE_")}
    env |= {
        "CUBE_PORT": str(free_port_pair()),
        "CUBE_DATA_DIR": str(tmp_path / "data"),
        "CUBE_WEB_PORT": str(free_port()),
        "CUBE_NODE_NAME": unique_name("quickstart"),
    }
    yield env
    pidfile = tmp_path / "data" / "dev.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    remove_containers(f"cube.worker={env['CUBE_NODE_NAME']}")


def test_quickstart_leaves_a_cluster_serving_the_example(quickstart_env: dict[str, str]) -> None:
    """Also beside the README's own quickstart, still running: README_PORTS are taken."""
    result = quickstart(quickstart_env)
    task_id = served_task(result)
    web = f"http://127.0.0.1:{quickstart_env['CUBE_WEB_PORT']}/"
    assert f"It answers on {web}" in result.stdout

    assert "Hello from a Cube task." in httpx.get(web, timeout=5).text
    running = docker("ps", "-q", "--filter", f"label=cube.task-id={task_id}").split()
    assert len(running) == 1

    # The next commands it suggests work as printed, with no token set up by hand.
    status = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "cube"), "status", task_id[:12], "-o", "json"],
        env={**quickstart_env, "CUBE_ADDR": f"http://127.0.0.1:{quickstart_env['CUBE_PORT']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert '"state": "running"' in status.stdout
    # So does the dashboard it names, with the token in the file it names.
    manager = f"http://127.0.0.1:{quickstart_env['CUBE_PORT']}"
    token_file = Path(quickstart_env["CUBE_DATA_DIR"]) / "dev" / "manager" / "token"
    assert f"cluster token in {token_file}" in result.stdout
    assert f"The dashboard: {manager}/ui/" in result.stdout
    login = httpx.post(f"{manager}/ui/login", data={"token": token_file.read_text().strip()})
    assert (login.status_code, login.headers["location"]) == (303, "/ui/")

    # Run again, it finds its cluster and its web task, and starts neither twice.
    again = quickstart(quickstart_env)
    assert "already answers" in again.stdout
    assert f"the web task {task_id[:12]} already runs" in again.stdout
    assert served_task(again) == task_id
    assert docker("ps", "-q", "--filter", f"label=cube.task-id={task_id}").split() == running


def quickstart(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello from a Cube task." in result.stdout
    return result


def served_task(result: subprocess.CompletedProcess[str]) -> str:
    """The task ID in the script's "The web task ID is running" line."""
    task_line = next(line for line in result.stdout.splitlines() if line.startswith("The web task"))
    return task_line.split()[3]
