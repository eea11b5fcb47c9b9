"""A worker joining a manager: register, and keep trying until the manager answers.

The worker proves it is the node it says with the node secret the manager issued at
its first join, kept in its data dir (see :mod:`cube.manager.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import httpx

from cube.api.client import check
from cube.api.tls import Verify
from cube.errors import Conflict, CubeError
from cube.log import get_logger
from cube.protocol import JoinAnswer, NodeRegistration

log = get_logger("cube.worker")


def read_secret(path: Path) -> str | None:
    """The node secret kept at ``path``; None before the first join."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CubeError(f"cannot read the node secret {path}: {exc.strerror}") from None


def keep_secret(path: Path, secret: str) -> None:
    """Write the node secret to ``path``, mode 0600, whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def join_manager(
    manager_url: str,
    *,
    name: str,
    address: str,
    token: str | None = None,
    join_token: str | None = None,
    secret_file: Path | None = None,
    running: Sequence[str] = (),
    verify: Verify = True,
    retry: float = 2.0,
) -> JoinAnswer:
    """Register at the manager's ``POST /v1/nodes``, retrying until it is accepted.

    ``join_token`` proves the worker may join; ``token`` is what the manager must
    present when it calls this worker back; ``secret_file`` keeps the node secret
    (presented if there, written when the manager issues one); ``running``: the tasks
    whose containers it found running, for the manager to take back. Raises
    :class:`Conflict` if the name belongs to another worker: retrying cannot help.
    """
    headers = {"Authorization": f"Bearer {join_token}"} if join_token else {}
    url = f"{manager_url.rstrip('/')}/v1/nodes"
    async with httpx.AsyncClient(timeout=10.0, verify=verify) as http:
        while True:
            secret = read_secret(secret_file) if secret_file else None
            # Not validated here: the manager judges the registration, and says why not.
            registration = NodeRegistration.model_construct(
                name=name, address=address, token=token, secret=secret, running=list(running)
            )
            body = registration.model_dump(mode="json")
            try:
                answer = JoinAnswer.model_validate(
                    check(await http.post(url, json=body, headers=headers)).json()
                )
            except httpx.HTTPError as exc:
                log.warning("manager not answering yet", manager=manager_url, error=str(exc))
            except ValueError as exc:  # pydantic's ValidationError too: not a join answer
                log.warning(
                    "manager's answer to the join is unreadable (another version?)",
                    manager=manager_url,
                    error=str(exc).splitlines()[0],
                )
            except Conflict as exc:
                raise Conflict(f"the manager at {manager_url} refused: {exc.message}") from None
            except CubeError as exc:
                log.warning(
                    "manager refused to register this worker",
                    manager=manager_url,
                    error=exc.message,
                )
            else:
                if answer.secret is not None and secret_file is not None:
                    keep_secret(secret_file, answer.secret)
                log.info(
                    "joined the cluster",
                    node=name,
                    manager=manager_url,
                    address=address,
                    tasks=len(answer.tasks),
                )
                return answer
            await asyncio.sleep(retry)
