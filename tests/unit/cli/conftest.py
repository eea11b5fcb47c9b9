"""What every CLI test here runs with: output as a pipe would get it, and polls that do
not wait (the fake manager answers at once)."""

from __future__ import annotations

import pytest

from cube.cli import job_follow
from cube.cli import run as run_cli


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output as a pipe would get it, whatever the developer's terminal settings."""
    for name in ("CUBE_ADDR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(run_cli, "POLL_INTERVAL", 0.001)


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cube job`` commands that follow a job poll at once."""
    monkeypatch.setattr(job_follow, "POLL", 0.001)
