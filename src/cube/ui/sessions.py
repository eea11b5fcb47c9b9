"""The dashboard's sessions: who logged in with the cluster token, kept server-side.

A browser holds only a random session ID (256 bits, in an HttpOnly cookie); the manager
keeps, per session, its CSRF token and when it expires. Nothing in the cookie can be
forged or replayed after logout, and the cluster token itself never reaches the browser
again after the login form. Sessions live in the manager's memory: a restarted manager
asks everyone to log in again, which is the safe side of forgetting.

Pure: every method takes the clock (``now``, seconds) as an argument.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from cube.auth import same

#: How long a session lasts after login (a working day), whatever its activity.
SESSION_LIFETIME = 12 * 3600.0
#: Sessions kept at most; the oldest goes first (a login loop cannot grow the manager).
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Session:
    csrf: str
    expires: float

    def csrf_matches(self, given: str) -> bool:
        return bool(given) and same(given, self.csrf)


def _key(session_id: str) -> str:
    """Sessions are found by a digest of their ID: a memory dump does not hand them out."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, *, lifetime: float = SESSION_LIFETIME, limit: int = MAX_SESSIONS) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._sessions: dict[str, Session] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, now: float) -> tuple[str, Session]:
        """A new session; returns its ID (for the cookie) and the session."""
        while len(self._sessions) >= self.limit:
            del self._sessions[next(iter(self._sessions))]
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=now + self.lifetime)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session with this ID; None if unknown or expired (then forgotten)."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if now >= session.expires:
            del self._sessions[key]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(_key(session_id), None)
