"""The restart policy as a pure decision: given how a container ended, restart it?

Kept apart from the worker's I/O so every case is a one-line unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

from cube.task.spec import RestartPolicy, RestartPolicyName


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay: float  # seconds to wait before the restart
    reason: str  # why, in words a user reads in the task's events


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
    policy: RestartPolicy, *, exit_code: int | None, restarts_so_far: int, cause: str = ""
) -> RestartDecision:
    """Whether a task whose container ended with ``exit_code`` should run again.

    ``exit_code`` is None when the container never ran (start failed, vanished):
    that counts as a failure. ``cause`` (e.g. "unhealthy: ...") replaces the plain
    description of the exit in the reason.
    """
    failed = exit_code != 0
    how = cause or ("could not run" if exit_code is None else f"exited with code {exit_code}")
    if policy.policy is RestartPolicyName.NEVER:
        return RestartDecision(False, 0.0, f"{how}; restart policy is never")
    if policy.policy is RestartPolicyName.ON_FAILURE and not failed:
        return RestartDecision(False, 0.0, f"{how}; on-failure does not restart a success")
    if policy.max_attempts is not None and restarts_so_far >= policy.max_attempts:
        return RestartDecision(
            False, 0.0, f"{how}; gave up after {restarts_so_far} of {policy.max_attempts} restarts"
        )
    limit = "" if policy.max_attempts is None else f" of {policy.max_attempts}"
    delay = restart_delay(policy, restarts_so_far)
    return RestartDecision(
        True,
        delay,
        f"{how}; restart {restarts_so_far + 1}{limit} ({policy.policy.value}) in {delay:g}s",
    )
