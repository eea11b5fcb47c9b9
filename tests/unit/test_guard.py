"""The connection guard's bookkeeping, alone: which connection a full agent closes, and
that it says so once (tests/e2e/test_security.py runs it against 2,000 real slow clients)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from cube.api.guard import ConnectionGuard, GuardedProtocol, connection_limit


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return self.name


def conn(name: str) -> GuardedProtocol:
    return cast(GuardedProtocol, Conn(name))


def test_a_full_guard_closes_the_oldest_connection_waiting_for_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ConnectionGuard(limit=3)
    a, b, c = conn("a"), conn("b"), conn("c")
    for x in (a, b, c):
        assert guard.admit(x)
    guard.busy(a)  # a is being served: never closed for a newcomer
    guard.idle(b)
    guard.idle(b)  # b answered again: now the newest waiting one
    d = conn("d")
    assert guard.admit(d)
    assert [x for x in (a, b, c) if cast(Any, x).closed] == [c]
    e = conn("e")
    assert guard.admit(e)
    assert cast(Any, b).closed
    assert guard.open == {a, d, e}
    warnings = [r for r in caplog.records if "connection limit reached" in r.getMessage()]
    assert len(warnings) == 1


def test_a_guard_full_of_requests_in_progress_refuses_the_newcomer() -> None:
    guard = ConnectionGuard(limit=2)
    a, b = conn("a"), conn("b")
    for x in (a, b):
        guard.admit(x)
        guard.busy(x)
    assert not guard.admit(conn("c"))
    assert guard.refused == 1
    guard.release(a)
    assert guard.admit(conn("d"))


def test_the_warning_comes_again_only_after_the_load_went_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ConnectionGuard(limit=4)
    conns = [conn(str(i)) for i in range(6)]
    for x in conns:
        guard.admit(x)
    for x in list(guard.open):
        guard.release(x)
    for x in [conn(f"again{i}") for i in range(6)]:
        guard.admit(x)
    warnings = [r for r in caplog.records if "connection limit reached" in r.getMessage()]
    assert len(warnings) == 2


@pytest.mark.parametrize(
    ("open_files", "limit"), [(1024, 512), (20000, 4096), (1 << 20, 4096), (10, 16)]
)
def test_half_the_descriptors_go_to_clients_within_bounds(open_files: int, limit: int) -> None:
    assert connection_limit(open_files) == limit
