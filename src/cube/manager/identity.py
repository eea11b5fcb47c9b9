"""A node's name is bound to the worker that first joined under it, like Nomad's node
secret ID.

At its first join a worker is issued a node secret, which it keeps in its data dir
(0600) and presents at every later join. The manager keeps only the secret's SHA-256:
its store then holds nothing a reader could join with. A join under a taken name must
present the secret: the join token lets a worker *join*, not *become* another node
(without this, anyone with the join token could register at a new address under an
existing name and receive every task of that node, secret env values included).
"""

from __future__ import annotations

import hashlib

from cube.auth import new_token, same
from cube.errors import Conflict
from cube.node import NODE_SECRET_FILE, Node


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh node secret and the digest the manager keeps of it."""
    secret = new_token()
    return secret, digest(secret)


def check_claim(node: Node | None, *, address: str, secret: str | None) -> bool:
    """May a worker presenting ``secret`` from ``address`` join as ``node``?

    Returns True if it must be issued a (new) secret: a name never seen, or a node that
    joined before secrets existed (or through ``--workers``), claimed from its own
    address. Raises :class:`Conflict` (409) when the name belongs to another worker.
    """
    if node is None:
        return True
    if node.secret_hash is None:
        if address == node.address:
            return True
        raise Conflict(
            f"node name {node.name!r} is taken by the worker at {node.address}; "
            f"it has no node secret yet, so it can only join again from that address"
        )
    if secret is not None and same(digest(secret), node.secret_hash):
        return False
    raise Conflict(
        f"node name {node.name!r} is taken by another worker (last at {node.address}): "
        f"a join under a taken name must present that worker's node secret "
        f"(DATA_DIR/{NODE_SECRET_FILE}); start this worker with another --name"
    )
