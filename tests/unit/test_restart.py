"""The restart policy as a pure decision: cube.task.restart, every case in one table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cube.task.restart import (
    ENGINE_SHUTDOWN_GRACE,
    EngineFacts,
    Outage,
    RestartDecision,
    decide_restart,
    ended_by_engine,
    restart_delay,
)
from cube.task.spec import RestartPolicy, RestartPolicyName

NEVER, ON_FAILURE, ALWAYS = RestartPolicyName


def policy(name: RestartPolicyName, max_attempts: int | None = 2, **kw: float) -> RestartPolicy:
    return RestartPolicy(policy=name, max_attempts=max_attempts, **kw)


def decide(p: RestartPolicy, exit_code: int | None, restarts: int) -> RestartDecision:
    return decide_restart(p, exit_code=exit_code, restarts_so_far=restarts)


# --- which policy restarts what -----------------------------------------------------------------
# (policy, exit code, restarts so far) -> restart?  max_attempts is 2 throughout.
CASES = [
    (NEVER, 0, 0, False),
    (NEVER, 3, 0, False),
    (NEVER, None, 0, False),
    (ON_FAILURE, 0, 0, False),
    (ON_FAILURE, 3, 0, True),
    (ON_FAILURE, 3, 1, True),
    (ON_FAILURE, 3, 2, False),  # at the limit
    (ON_FAILURE, None, 0, True),  # never ran: a failure
    (ON_FAILURE, None, 2, False),
    (ALWAYS, 0, 0, True),
    (ALWAYS, 0, 2, False),
    (ALWAYS, 3, 1, True),
    (ALWAYS, 3, 2, False),
    (ALWAYS, None, 0, True),
    (ALWAYS, None, 2, False),
]


@pytest.mark.parametrize(("name", "code", "restarts", "expected"), CASES)
def test_which_endings_restart(
    name: RestartPolicyName, code: int | None, restarts: int, expected: bool
) -> None:
    decision = decide(policy(name), code, restarts)
    assert decision.restart is expected
    if not expected:
        assert decision.delay == 0.0


@pytest.mark.parametrize("name", [ON_FAILURE, ALWAYS])
@pytest.mark.parametrize("code", [1, 3, 137, None])
def test_without_max_attempts_it_never_gives_up(name: RestartPolicyName, code: int | None) -> None:
    p = policy(name, max_attempts=None)
    for restarts in (0, 1, 10, 10_000):
        decision = decide(p, code, restarts)
        assert decision.restart
        assert f"restart {restarts + 1} ({name.value})" in decision.reason
        assert " of " not in decision.reason


def test_max_attempts_zero_means_no_restart_at_all() -> None:
    decision = decide(policy(ON_FAILURE, max_attempts=0), 1, 0)
    assert not decision.restart
    assert "gave up after 0 of 0 restarts" in decision.reason


# --- the reasons users read ---------------------------------------------------------------------
def test_restart_reason_names_code_count_and_delay() -> None:
    decision = decide(policy(ON_FAILURE, delay=1.0), 3, 1)
    assert decision == RestartDecision(
        True, 2.0, "exited with code 3; restart 2 of 2 (on-failure) in 2s"
    )


def test_gave_up_reason_names_code_and_count() -> None:
    decision = decide(policy(ALWAYS), 7, 2)
    assert decision.reason == "exited with code 7; gave up after 2 of 2 restarts"


def test_a_container_that_never_ran_says_so() -> None:
    assert decide(policy(ALWAYS), None, 0).reason.startswith("could not run; restart 1 of 2")
    assert decide(policy(NEVER), None, 0).reason == "could not run; restart policy is never"


@pytest.mark.parametrize("code", [0, 3])
def test_never_reason_names_the_code(code: int) -> None:
    assert decide(policy(NEVER), code, 0).reason == (
        f"exited with code {code}; restart policy is never"
    )


def test_on_failure_says_why_a_success_stays_down() -> None:
    decision = decide(policy(ON_FAILURE), 0, 0)
    assert decision.reason == "exited with code 0; on-failure does not restart a success"


# --- a health check that failed -------------------------------------------------------------------
@pytest.mark.parametrize("code", [0, 143, None])
def test_an_unhealthy_stop_is_a_failure_whatever_the_exit_code(code: int | None) -> None:
    """Many servers exit 0 on the SIGTERM that stops an unhealthy container."""
    decision = decide_restart(
        policy(ON_FAILURE),
        exit_code=code,
        restarts_so_far=0,
        cause="unhealthy: 3 checks failed in a row, last: GET /: HTTP 404",
        unhealthy=True,
    )
    assert decision.restart
    assert decision.counted
    assert decision.reason == (
        "unhealthy: 3 checks failed in a row, last: GET /: HTTP 404; "
        "restart 1 of 2 (on-failure) in 1s"
    )


def test_an_unhealthy_stop_still_gives_up_at_max_attempts() -> None:
    decision = decide_restart(
        policy(ON_FAILURE), exit_code=0, restarts_so_far=2, cause="unhealthy", unhealthy=True
    )
    assert decision == RestartDecision(False, 0.0, "unhealthy; gave up after 2 of 2 restarts")


# --- the engine went away ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [ON_FAILURE, ALWAYS])
@pytest.mark.parametrize("code", [0, 137, 143, None])
def test_an_ending_caused_by_the_engine_is_restarted_and_not_counted(
    name: RestartPolicyName, code: int | None
) -> None:
    p = policy(name, max_attempts=1, delay=0.5)
    for restarts in (0, 1):  # at the limit too: the attempt was never the task's to lose
        decision = decide_restart(p, exit_code=code, restarts_so_far=restarts, by_engine=True)
        assert decision.restart
        assert not decision.counted
        assert "engine restarted or unreachable, not counted" in decision.reason
        assert decision.delay == restart_delay(p, restarts)


def test_never_stays_never_when_the_engine_went_away() -> None:
    decision = decide_restart(policy(NEVER), exit_code=143, restarts_so_far=0, by_engine=True)
    assert not decision.restart


def test_a_failure_is_counted_by_default() -> None:
    assert decide(policy(ON_FAILURE), 1, 0).counted


NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("facts", "ended_at", "expected"),
    [
        (EngineFacts(answering=False), None, True),  # stopping or down right now
        (EngineFacts(answering=False), NOW, True),
        (EngineFacts(), NOW, False),  # answering, never lost
        (EngineFacts(), None, False),
        # Lost after the ending, within the grace: dockerd stops containers, then goes.
        (EngineFacts(outages=[Outage(NOW + 10, NOW + 20)]), NOW, True),
        (EngineFacts(outages=[Outage(NOW + ENGINE_SHUTDOWN_GRACE + 1, NOW + 40)]), NOW, False),
        (EngineFacts(outages=[Outage(NOW - 5, NOW + 5)]), NOW, True),  # during an outage
        (EngineFacts(outages=[Outage(NOW - 5)]), NOW, True),  # an outage not yet over
        (EngineFacts(outages=[Outage(NOW - 20, NOW - 10)]), NOW, False),  # long after it
        (EngineFacts(outages=[Outage(NOW - 20, NOW - 10), Outage(NOW + 1, NOW + 2)]), NOW, True),
    ],
)
def test_which_endings_were_the_engines_doing(
    facts: EngineFacts, ended_at: float | None, expected: bool
) -> None:
    assert ended_by_engine(facts, ended_at=ended_at) is expected


# --- backoff --------------------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap() -> None:
    p = policy(ALWAYS, max_attempts=None, delay=1.0, backoff=2.0, max_delay=30.0)
    assert [restart_delay(p, n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_decisions_carry_the_backoff_delay() -> None:
    p = policy(ON_FAILURE, max_attempts=10, delay=0.5, backoff=3.0, max_delay=10.0)
    assert [decide(p, 1, n).delay for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_backoff_of_one_keeps_the_delay_constant() -> None:
    p = policy(ALWAYS, max_attempts=None, delay=2.0, backoff=1.0)
    assert {restart_delay(p, n) for n in (0, 1, 5, 100_000)} == {2.0}


def test_a_delay_above_max_delay_is_not_cut_below_itself() -> None:
    p = policy(ALWAYS, delay=10.0, backoff=2.0, max_delay=5.0)
    assert restart_delay(p, 0) == restart_delay(p, 4) == 10.0


def test_zero_delay_stays_zero() -> None:
    p = policy(ALWAYS, max_attempts=None, delay=0.0)
    assert restart_delay(p, 0) == restart_delay(p, 5_000) == 0.0


@pytest.mark.parametrize("backoff", [2.0, 10.0])
def test_a_long_crash_loop_stays_at_the_cap(backoff: float) -> None:
    """Past ~1000 restarts ``backoff**n`` no longer fits in a float: still just the cap."""
    p = policy(ALWAYS, max_attempts=None, delay=1.0, backoff=backoff, max_delay=30.0)
    assert restart_delay(p, 5_000) == 30.0
    assert decide(p, 1, 5_000).delay == 30.0


@settings(max_examples=200, deadline=None)
@given(
    delay=st.floats(min_value=0, max_value=3600),
    backoff=st.floats(min_value=1.0, max_value=10.0),
    max_delay=st.floats(min_value=0, max_value=3600),
    restarts=st.integers(min_value=0, max_value=100_000),
    step=st.integers(min_value=1, max_value=2_000),
)
def test_delay_is_capped_and_never_shrinks(
    delay: float, backoff: float, max_delay: float, restarts: int, step: int
) -> None:
    p = policy(ALWAYS, max_attempts=None, delay=delay, backoff=backoff, max_delay=max_delay)
    now, later = restart_delay(p, restarts), restart_delay(p, restarts + step)
    assert 0 <= now <= max(max_delay, delay)
    assert now <= later <= max(max_delay, delay)
