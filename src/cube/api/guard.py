"""Keeping one client from locking everyone out of an agent's API.

uvicorn alone has no header timeout and no connection limit: a few thousand connections
that send their headers a byte a second (slowloris) hold every file descriptor the process
may open, and then every request fails, ``GET /v1/health`` included, while asyncio logs a
"Too many open files" traceback per refused accept. Three defences, all per process:

* the soft ``RLIMIT_NOFILE`` is raised to the hard limit at start (:func:`raise_open_files`);
* a connection must finish a request's headers within ``HEADER_TIMEOUT`` of opening (or of
  its previous answer); an idle keep-alive connection closes after ``IDLE_TIMEOUT``;
* at most ``limit`` connections are open at once, well under the descriptor limit. A new
  connection beyond it closes the oldest connection that has not finished its headers (an
  attacker's, as a rule: a real client sends its request at once), so that a health probe
  still gets through; only if every connection is busy with a request is the new one
  refused. Reaching the limit is logged once, and again only after the load went away.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from cube.log import get_logger

log = get_logger("cube.api")

#: Seconds a connection has to send a request's headers: a real client needs milliseconds.
HEADER_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection stays open (uvicorn's default, said out loud: the
#: manager's HTTP clients reuse connections idle for less).
IDLE_TIMEOUT = 5.0
#: The most connections an agent keeps open, if its descriptor limit allows that many.
MAX_CONNECTIONS = 4096
#: Connections the kernel queues for accept: a short queue drops a client's SYN when many
#: connect at once, and its connect then waits a second for the retry.
KERNEL_BACKLOG = 2048


def raise_open_files() -> int:
    """Raise this process' soft limit of open files to its hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # some sandboxes refuse: keep the soft limit
            log.warning("cannot raise the open-file limit", soft=soft, hard=hard, error=str(exc))
    return soft


def connection_limit(open_files: int) -> int:
    """Half the descriptors for clients: the rest is for a burst of accepts (see
    ConnectionGuard.backlog), the store, the Docker engine and (on a manager) the
    connections to every worker."""
    return max(16, min(MAX_CONNECTIONS, open_files // 2))


class ConnectionGuard:
    """The open connections of one process, in the order they last began waiting for a request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: How many connections asyncio accepts in one go before any of them reaches
        #: connection_made (where the limit is enforced): a fraction of the limit, so a
        #: burst cannot overshoot the descriptors left. asyncio takes it from the listen
        #: backlog, which widen_backlog() then sets back to KERNEL_BACKLOG.
        self.backlog = max(16, min(128, limit // 4))
        self.open: set[GuardedProtocol] = set()
        #: Connections without a request in progress, oldest first (dicts keep insertion order).
        self.waiting: dict[GuardedProtocol, None] = {}
        self.evicted = 0
        self.refused = 0
        self._warned = False

    def admit(self, conn: GuardedProtocol) -> bool:
        """Count a new connection in; False if it must be closed at once."""
        if len(self.open) >= self.limit:
            if not self._warned:
                self._warned = True
                log.warning(
                    "connection limit reached: closing the oldest connections that have not "
                    "sent a request (logged once until the load goes away)",
                    limit=self.limit,
                    header_timeout=HEADER_TIMEOUT,
                )
            if self.waiting:
                oldest = next(iter(self.waiting))
                self.evicted += 1
                self.open.discard(oldest)  # now, not when the loop reports it lost
                self.waiting.pop(oldest)
                oldest.close()
            else:
                self.refused += 1
                return False
        self.open.add(conn)
        self.waiting[conn] = None
        return True

    def busy(self, conn: GuardedProtocol) -> None:
        self.waiting.pop(conn, None)

    def idle(self, conn: GuardedProtocol) -> None:
        self.waiting.pop(conn, None)
        self.waiting[conn] = None

    def release(self, conn: GuardedProtocol) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)
        if self._warned and len(self.open) < self.limit // 2:
            self._warned = False
            log.info(
                "connections back under the limit",
                open=len(self.open),
                limit=self.limit,
                evicted=self.evicted,
                refused=self.refused,
            )


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout, under a :class:`ConnectionGuard`."""

    guard: ConnectionGuard  # set on the subclass made by guarded_protocol()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting = False  # for a request's headers
        #: The request cycle when the connection began to wait: a new one is a new request.
        self._answered: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()
            return
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.guard.release(self)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._waiting and self.cycle is not self._answered:
            self._waiting = False  # a new request's headers are in
            self._cancel_header_timer()
            self.guard.busy(self)

    def handle_websocket_upgrade(self, event: Any) -> None:
        """The connection becomes a WebSocket's (``cube exec``): uvicorn hands it to a
        protocol that never reports back here, so it leaves the guard now, and the header
        timer, which would close it, stops. An open WebSocket is then not counted: their
        number is small next to the limit's margin (half the descriptors)."""
        self._waiting = False
        self._cancel_header_timer()
        self.guard.release(self)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing() and self.cycle.response_complete:
            # Answered: waiting for the next request, even while the client still sends a
            # body nobody reads (a 401 answered before it): that must not hold a slot.
            self._expect_headers()

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()  # no lingering: the point is to free the descriptor

    def _expect_headers(self) -> None:
        self._cancel_header_timer()
        self._waiting = True
        self._answered = self.cycle
        self.guard.idle(self)
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self.close)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


_process_guard: ConnectionGuard | None = None


def process_guard() -> ConnectionGuard:
    """The one guard of this process, shared by its servers (``cube dev`` runs two): the
    descriptor limit is the process'. Raises the open-file limit the first time."""
    global _process_guard
    if _process_guard is None:
        _process_guard = ConnectionGuard(connection_limit(raise_open_files()))
    return _process_guard


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to ``guard``."""
    return type("GuardedH11Protocol", (GuardedProtocol,), {"guard": guard})


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log a refused ``accept`` (out of descriptors) once a minute, not once per try.

    The guard keeps an agent under its limit; this is for what it cannot see (descriptors
    taken by something else). asyncio itself logs a traceback per failed accept.
    """
    last = [-60.0]
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            if loop.time() - last[0] >= 60.0:
                last[0] = loop.time()
                log.error("cannot accept connections (logged once a minute)", error=str(exc))
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def widen_backlog(server: asyncio.Server) -> None:
    """Let the kernel queue ``KERNEL_BACKLOG`` connections on ``server``'s sockets while
    asyncio keeps accepting ``ConnectionGuard.backlog`` at a time (see there). On Linux a
    second ``listen()`` changes the backlog of a listening socket."""
    for transport_socket in server.sockets:
        with socket.socket(fileno=os.dup(transport_socket.fileno())) as sock:
            sock.listen(KERNEL_BACKLOG)
