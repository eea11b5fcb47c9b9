"""An agent's data directory is private: it holds the store and the token files.

A manager's store keeps every worker's token and the tasks' environment; a worker's,
its own token. So the directory is 0700 and every file in it 0600, checked at each
start: a directory made by hand (``mkdir`` gives 0755) or files copied in with a
lax mode are tightened, with a log line saying what changed. A directory that belongs
to another user is refused: that user can read it whatever its mode.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cube.errors import Conflict, StoreUnavailable
from cube.log import get_logger

log = get_logger("cube.store")

#: Permission bits for the group and others: none of them may be set.
SHARED_BITS = 0o077

#: The file an agent holds a lock on while it uses its data dir (see claim_data_dir).
LOCK_FILE = "agent.lock"

#: The lock files this process holds, open until it exits (the lock goes with the file).
_held: dict[Path, int] = {}


def private(path: Path) -> None:
    """Make a file readable by its owner only (0600): the store holds tokens and secrets."""
    if path.stat().st_mode & SHARED_BITS:
        path.chmod(0o600)


def secure_data_dir(path: Path) -> None:
    """Create ``path`` if needed and make it and everything in it private.

    Raises StoreUnavailable for a directory (or a file in it) of another user, or one
    that cannot be changed (a read-only file system).
    """
    try:
        _secure(path)
    except OSError as exc:
        raise StoreUnavailable(
            f"cannot make the data dir {path} private: {exc.strerror} ({exc.filename});"
            " give a --data-dir this user can write"
        ) from None


def _secure(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_owner(path)
    tightened = []
    for current, dirs, files in os.walk(path):  # does not follow symbolic links
        for name in [*dirs, *files]:
            entry = Path(current, name)
            if entry.is_symlink():
                continue
            _check_owner(entry)
            mode = entry.stat().st_mode
            if mode & SHARED_BITS:
                entry.chmod(0o700 if entry.is_dir() else mode & 0o700 | 0o600)
                tightened.append(str(entry.relative_to(path)))
    mode = path.stat().st_mode
    if mode & SHARED_BITS:
        path.chmod(0o700)
        log.warning(
            "data dir was open to other users; made it 0700",
            path=str(path),
            was=oct(mode & 0o777),
        )
    if tightened:
        log.warning(
            "files in the data dir were open to other users; made them private",
            path=str(path),
            files=",".join(sorted(tightened)),
        )


def _check_owner(path: Path) -> None:
    owner = path.lstat().st_uid
    if owner != os.geteuid():
        raise StoreUnavailable(
            f"{path} belongs to user id {owner}, not to this user ({os.geteuid()}), who"
            " keeps tokens there; refusing to use it: give a --data-dir of your own, or"
            " chown it"
        )


def claim_data_dir(path: Path) -> None:
    """Hold an exclusive lock on ``path`` for as long as this process runs.

    Two agents on one data dir would both write its store and both act on it: two
    managers placing the same tasks, two workers adopting the same containers (each
    stopping what the other started). So a second one is refused, in one line that
    names the holder. The lock is the kernel's (``flock``): it ends with the process,
    however it ends (``kill -9`` too), so a stale file never keeps an agent out.
    """
    path = path.resolve()
    if path in _held:
        return
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a read-only file system, a directory of another user
        raise StoreUnavailable(
            f"cannot write {lock}: {exc.strerror}; give a --data-dir this user can write"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Conflict(
            f"the data dir {path} is in use by another cube agent (pid {holder}): stop it,"
            " or give this one a --data-dir of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[path] = fd
