"""The README's main command, run as written: a fresh one-node cluster serving the example.

(The README's other command, ``bash scripts/test.sh``, is what CI runs to get here.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import docker, free_port_pair, remove_containers

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.docker


@pytest.fixture
def quickstart_env(docker_engine: None, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private data dir and port, and no token from the test session: the script must
    find its own. Stops the cluster it started and removes the task it ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUBE_")}
    env |= {"CUBE_PORT": str(free_port_pair()), "CUBE_DATA_DIR": str(tmp_path / "data")}
    yield env
    pidfile = tmp_path / "data" / "dev.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    for task_id in (
        (tmp_path / "task-id").read_text().split() if (tmp_path / "task-id").exists() else []
    ):
        remove_containers(f"cube.task-id={task_id}")


def test_quickstart_leaves_a_cluster_serving_the_example(
    quickstart_env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=ROOT,
        env=quickstart_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello from a Cube task." in result.stdout
    task_line = next(line for line in result.stdout.splitlines() if line.startswith("The web task"))
    task_id = task_line.split()[3]
    (tmp_path / "task-id").write_text(task_id)

    assert "Hello from a Cube task." in httpx.get("http://127.0.0.1:8080/", timeout=5).text
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
