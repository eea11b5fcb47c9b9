"""The ``cube`` CLI as a subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def cube(*args: str, addr: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cube ARGS``; ``addr`` goes in ``CUBE_ADDR``, else ``--manager`` must."""
    env = {k: v for k, v in os.environ.items() if k != "CUBE_ADDR"}
    if addr is not None:
        env["CUBE_ADDR"] = addr
    return subprocess.run(
        [sys.executable, "-m", "cube", *args], capture_output=True, text=True, timeout=60, env=env
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout
