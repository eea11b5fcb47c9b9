"""Fixtures every kind of test shares: the hypothesis profile, the session's own data dir,
a port held as another process would hold it.

The end-to-end fixtures (the Docker engine, agents as real processes, cleanup by label)
are tests/e2e/conftest.py's; helpers are modules of tests/support/.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Property tests judge correctness, not speed: on a busy 2-core CI machine a slow example
# is not a failing one.
settings.register_profile(
    "cube", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("cube")


@pytest.fixture
def held_port() -> Iterator[socket.socket]:
    """A TCP socket listening on every address, held by the test as a process outside Cube
    would hold it. Its port: ``held_port.getsockname()[1]``; ``close()`` frees it."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield s


@pytest.fixture(scope="session", autouse=True)
def _private_data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test session's own ``CUBE_DATA_DIR``: agents and CLIs it starts neither read
    the token files of a cluster the user runs on this machine (the README's quickstart)
    nor leave their address pointers in the user's data dir."""
    saved = os.environ.get("CUBE_DATA_DIR")
    os.environ["CUBE_DATA_DIR"] = str(tmp_path_factory.mktemp("cube-data-root"))
    yield
    if saved is None:
        os.environ.pop("CUBE_DATA_DIR", None)
    else:
        os.environ["CUBE_DATA_DIR"] = saved
