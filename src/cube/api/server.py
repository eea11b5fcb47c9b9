"""Running Cube's APIs with uvicorn: one or several servers in one process.

A SIGTERM/SIGINT is a clean stop (exit code 0), not a re-raised signal: the first
one drains requests and runs each app's shutdown (a worker leaves its containers
running); a second one forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence

import uvicorn
from fastapi import FastAPI

from cube.api.guard import (
    IDLE_TIMEOUT,
    guarded_protocol,
    process_guard,
    quiet_accept_errors,
    widen_backlog,
)
from cube.api.tls import Tls
from cube.errors import CannotListen, CubeError
from cube.log import get_logger

log = get_logger("cube.server")


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` handles signals for all servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):  # none if the port was taken
            widen_backlog(server)


def make_server(app: FastAPI, *, host: str, port: int, tls: Tls | None = None) -> Server:
    guard = process_guard()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        log_config=None,  # Cube's own key=value logging
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # A header timeout and a connection cap (see cube.api.guard), and an idle timeout.
        http=guarded_protocol(guard),
        # WebSockets (cube exec) with the websockets package; its legacy implementation,
        # which "auto" picks, is deprecated.
        ws="websockets-sansio",
        backlog=guard.backlog,
        timeout_keep_alive=int(IDLE_TIMEOUT),
    )
    return Server(config)


async def serve(
    *servers: Server,
    after_start: Callable[[], Awaitable[None]] | None = None,
    on_exit: Callable[[], None] | None = None,
) -> bool:
    """Run ``servers`` until a signal (or one of them stops); True if all started and
    ``after_start`` did not fail.

    ``after_start`` runs once every server listens (a worker joins its manager then);
    if it raises a CubeError, the error is logged in one line and the servers stop.
    ``on_exit`` runs when they are told to stop, before they wait for the requests in
    flight: a worker answers its blocking queries then, instead of holding them.
    """
    # Every port first, before any app starts: a worker adopts containers and joins at its
    # start, and uvicorn only binds after that (and then exits the process from a task).
    sockets = listen_all(servers)
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop)

    def stop_all(sig: int) -> None:
        if on_exit is not None:
            on_exit()
        for s in servers:
            s.handle_exit(sig, None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all, sig)
    running = [loop.create_task(s.serve([sock])) for s, sock in zip(servers, sockets, strict=True)]
    helper: asyncio.Task[None] | None = None
    failed = False

    async def run_after_start(func: Callable[[], Awaitable[None]]) -> None:
        nonlocal failed
        try:
            await func()
        except CubeError as exc:
            log.error("stopping", error=exc.message)
            failed = True
            stop_all(signal.SIGTERM)

    try:
        while not all(s.started for s in servers):
            if any(t.done() for t in running):  # one failed to start (port taken, ...)
                stop_all(signal.SIGTERM)
                break
            await asyncio.sleep(0.05)
        else:
            if after_start is not None:
                helper = loop.create_task(run_after_start(after_start))
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        stop_all(signal.SIGTERM)
        await asyncio.gather(*running, return_exceptions=True)
    finally:
        if helper is not None:
            helper.cancel()
            await asyncio.gather(helper, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return all(s.started for s in servers) and not failed


def listen_all(servers: Sequence[Server]) -> list[socket.socket]:
    """A listening socket for each server, or CannotListen naming the address that is
    taken (all of them closed): one line and exit 1, not uvicorn's exit 3 mid-start."""
    sockets: list[socket.socket] = []
    try:
        for s in servers:
            sockets.append(listen(s.config.host, s.config.port))
    except CannotListen:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, as uvicorn would bind it (SO_REUSEADDR)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = (
            " (another cube agent, or another program, listens there: stop it or choose"
            " another --port)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock
