"""Running an ASGI app with uvicorn, the same way for the manager and the worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


class Server(uvicorn.Server):
    """uvicorn, but a SIGTERM/SIGINT is a clean stop (exit code 0), not a re-raised signal.

    The first signal drains requests and runs the app's shutdown (a worker leaves its
    containers running); a second one forces the exit.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


def make_server(app: FastAPI, *, host: str, port: int) -> Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # Cube's own key=value logging
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return Server(config)
