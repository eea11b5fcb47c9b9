"""The ``cube`` CLI as a subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping


def run_cube(
    *args: str,
    env: Mapping[str, str] | None = None,
    drop_env: Iterable[str] = ("CUBE_ADDR",),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cube ARGS`` with this process's environment, less ``drop_env`` (so
    that the test's own settings do not leak in), plus ``env``."""
    full = {k: v for k, v in os.environ.items() if k not in set(drop_env)}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cube", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
    )


def cube(*args: str, addr: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cube ARGS``; ``addr`` goes in ``CUBE_ADDR``, else ``--manager`` must."""
    return run_cube(*args, env={} if addr is None else {"CUBE_ADDR": addr})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout
