"""Free local ports for the agents the tests start."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A port that is free, and the next one too (``cube dev`` puts its worker on port + 1).

    Picked below Linux's ephemeral range (32768 and up): a port + 1 in that range may be
    taken by any outgoing connection between the check and the bind.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two free ports in a row below the ephemeral range")
