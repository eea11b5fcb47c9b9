"""The running processes' wiring: a manager or a worker built from plain settings.

The CLI (:mod:`cube.cli.agents`) turns its options into these settings; tests and
benchmarks can build the same agents without going through click.
"""

from cube.agents.wiring import (
    ManagerParts,
    NodeConfig,
    WorkerParts,
    build_manager,
    build_worker,
    join_hook,
    manager_server,
    run_servers,
    worker_server,
)

__all__ = [
    "ManagerParts",
    "NodeConfig",
    "WorkerParts",
    "build_manager",
    "build_worker",
    "join_hook",
    "manager_server",
    "run_servers",
    "worker_server",
]
