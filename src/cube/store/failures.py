"""What a failed SQLite call means for the user: one line naming the file and what to do.

SQLite's own messages ("database or disk is full", "file is not a database") name no
file; and an agent's log or a 500 must not be the place a user learns that its disk
is full. Every SQLite error of :class:`~cube.store.sqlite.SqliteStore` goes through
:func:`store_error` and comes out as a :class:`~cube.errors.StoreUnavailable` (503 in
the API, one line and exit code 1 when an agent starts).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from cube.errors import StoreFull, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")

_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_NO_ACCESS = (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH)
_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
#: What to do with a store that cannot be read: said in every such message.
MOVE_IT_AWAY = "restore it from a backup, or move it away to start with an empty store"


def store_error(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    """The error to raise for SQLite's ``exc`` on the store at ``path``."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code == sqlite3.SQLITE_FULL:
        return StoreFull(f"cannot save: disk full at {path}")
    if code == sqlite3.SQLITE_READONLY or (code in _NO_ACCESS and _read_only(path)):
        return StoreUnavailable(
            f"cannot write {path}: the file or its file system is read-only ({exc});"
            " make it writable for this user, or start with another --data-dir"
        )
    if code in _DAMAGED:
        return StoreUnavailable(f"{path} is damaged or not a Cube store ({exc}); {MOVE_IT_AWAY}")
    if code in _NO_ACCESS:
        return StoreUnavailable(
            f"cannot open {path} ({exc}); check that this user may read and write it"
            " and its directory"
        )
    if code in _LOCKED:
        return StoreUnavailable(f"{path} is locked by another process ({exc}); try again")
    if code == sqlite3.SQLITE_IOERR:
        return StoreUnavailable(f"cannot read or write {path} ({exc}); check its disk")
    return StoreUnavailable(f"{path}: {exc}")


def _read_only(path: Path) -> bool:
    """Whether ``path`` (or, if missing, its directory) cannot be written by this process:
    SQLite says only "unable to open database file" then."""
    target = path if path.exists() else path.parent
    try:
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return not os.access(target, os.W_OK)


class _HasPath(Protocol):
    path: Path


S = TypeVar("S", bound=_HasPath)


def explained(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Raise SQLite's errors of ``method`` as :func:`store_error` says."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    return wrapper
