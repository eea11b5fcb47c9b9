"""An agent that cannot start says why in one line and exits 1: its port is taken, or its
data dir is in use by another agent. Real ``cube manager`` processes, no Docker."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import api
from tests.support.ports import free_port


def refused(*args: str) -> str:
    """Run ``cube ARGS`` expecting exit 1; its last line of stderr, checked to be one
    readable line (no traceback)."""
    run = subprocess.run(
        [sys.executable, "-m", "cube", *args], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return run.stderr.strip().splitlines()[-1]


def test_a_manager_on_a_port_that_is_taken_says_so_in_one_line(
    tmp_path: Path, held_port: socket.socket
) -> None:
    port = int(held_port.getsockname()[1])
    last = refused("manager", "--port", str(port), "--data-dir", str(tmp_path / "m"))
    assert last == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use (another cube"
        " agent, or another program, listens there: stop it or choose another --port)"
    )


def test_a_second_agent_on_a_data_dir_in_use_is_refused_until_the_first_is_gone(
    tmp_path: Path, start_manager: Any
) -> None:
    data = tmp_path / "shared"
    first = start_manager("--data-dir", str(data))
    assert first.proc is not None
    last = refused("manager", "--port", str(free_port()), "--data-dir", str(data))
    assert last == (
        f"Error: the data dir {data} is in use by another cube agent (pid {first.proc.pid}):"
        " stop it, or give this one a --data-dir of its own"
    )
    assert api.get(f"{first.url}/v1/health").status_code == 200  # the first goes on
    first.kill()  # kill -9: the lock goes with the process, no stale file keeps one out
    first.start()
    assert api.get(f"{first.url}/v1/health").status_code == 200
