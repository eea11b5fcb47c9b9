"""The restart policy as a pure decision: given how a container ended, restart it?

Kept apart from the worker's I/O so every case is a one-line unit test. The
runner gathers the facts (the exit code, whether Cube stopped the container for
failing its health check, what it knows of the engine's outages) and this module
decides; nothing here reads a clock or calls the engine.

It belongs to neither agent: the worker restarts by it, and the manager asks it whether a
task that failed will run again (:func:`cube.manager.allocs.ended_for_good`) before it
replaces the task's allocation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cube.task.spec import RestartPolicy, RestartPolicyName

#: How long before the worker lost its engine an ending still counts as the engine's doing.
#: dockerd stops its containers first and closes its connections last, waiting up to its
#: ``--shutdown-timeout`` (15 s by default) for them: the die events of an engine restart
#: come up to that long before the worker's event stream drops.
ENGINE_SHUTDOWN_GRACE = 15.0


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay: float  # seconds to wait before the restart
    reason: str  # why, in words a user reads in the task's events
    #: Whether the restart counts against ``max_attempts`` (not when the engine went away).
    counted: bool = True


@dataclass(frozen=True)
class Outage:
    """A time (Unix seconds) the worker could not reach its engine; ``end`` None: still."""

    start: float
    end: float | None = None


@dataclass(frozen=True)
class EngineFacts:
    """What the worker knows of its container engine when a task's container ended.

    ``answering``: a new connection to the engine was answered just now (a stopping
    dockerd stops accepting connections before it stops its containers).
    ``outages``: recent times the worker lost the engine (refused calls, a dropped
    event stream), oldest first.
    """

    answering: bool = True
    outages: Sequence[Outage] = ()


def ended_by_engine(engine: EngineFacts, *, ended_at: float | None) -> bool:
    """Whether an ending at ``ended_at`` (Unix seconds; None: unknown) was the engine's doing:
    the engine does not answer now, or the worker lost it around then (from
    :data:`ENGINE_SHUTDOWN_GRACE` before an outage to its end)."""
    if not engine.answering:
        return True
    if ended_at is None:
        return False
    return any(
        o.start - ENGINE_SHUTDOWN_GRACE <= ended_at and (o.end is None or ended_at <= o.end)
        for o in engine.outages
    )


def restart_delay(policy: RestartPolicy, restarts_so_far: int) -> float:
    """Exponential backoff: ``delay * backoff**n`` for the (n+1)-th restart, capped."""
    cap = max(policy.max_delay, policy.delay)
    if not policy.delay:
        return 0.0
    try:
        growth = policy.backoff**restarts_so_far
    except OverflowError:  # a long crash loop: 2.0**1024 does not fit in a float
        return cap
    return min(policy.delay * growth, cap)


def decide_restart(
    policy: RestartPolicy,
    *,
    exit_code: int | None,
    restarts_so_far: int,
    cause: str = "",
    unhealthy: bool = False,
    by_engine: bool = False,
) -> RestartDecision:
    """Whether a task whose container ended with ``exit_code`` should run again.

    ``exit_code`` is None when the container never ran (start failed, vanished):
    that counts as a failure. ``unhealthy``: Cube stopped the container because its
    health check failed, a failure whatever the process exited with (many servers
    exit 0 on SIGTERM). ``by_engine``: the engine went away (it stopped or killed the
    container, or refused the start while stopping, see :func:`ended_by_engine`): the
    task is restarted without counting it against ``max_attempts``. ``cause`` (e.g.
    "unhealthy: ...", "container did not start: port is already allocated") replaces
    the plain description of the exit in the reason.
    """
    failed = unhealthy or exit_code != 0
    how = cause or ("could not run" if exit_code is None else f"exited with code {exit_code}")
    if policy.policy is RestartPolicyName.NEVER:
        return RestartDecision(False, 0.0, f"{how}; restart policy is never")
    delay = restart_delay(policy, restarts_so_far)
    if by_engine:
        return RestartDecision(
            True,
            delay,
            f"{how}; engine restarted or unreachable, not counted: "
            f"restart ({policy.policy.value}) in {delay:g}s",
            counted=False,
        )
    if policy.policy is RestartPolicyName.ON_FAILURE and not failed:
        return RestartDecision(False, 0.0, f"{how}; on-failure does not restart a success")
    if policy.max_attempts is not None and restarts_so_far >= policy.max_attempts:
        return RestartDecision(
            False, 0.0, f"{how}; gave up after {restarts_so_far} of {policy.max_attempts} restarts"
        )
    limit = "" if policy.max_attempts is None else f" of {policy.max_attempts}"
    return RestartDecision(
        True,
        delay,
        f"{how}; restart {restarts_so_far + 1}{limit} ({policy.policy.value}) in {delay:g}s",
    )
