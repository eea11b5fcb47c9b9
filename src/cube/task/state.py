"""The task state machine: one table, and the only function that changes a state.

::

    Pending ──► Scheduled ──► Running ──► Completed
       ▲           │  ▲          │            │
       │           ▼  │          ▼            │ (restart: always)
       └────────  Failed ◄───────┘ ◄──────────┘

* Pending: accepted, waiting for a node.
* Scheduled: placed on a node (or about to be restarted there); no container runs yet.
* Running: its container is up (and healthy, when the task has a health check).
* Completed: its container exited with code 0, or a user stopped it.
* Failed: its container exited non-zero, could not start, or vanished.

Failed and Completed are terminal *unless* a restart policy (on the node) or a
reschedule (by the manager) moves the task on: ``Failed -> Scheduled`` is a restart
in place, ``* -> Pending`` sends the task back to the scheduler.
"""

from __future__ import annotations

from enum import StrEnum

from cube.errors import IllegalTransition


class State(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def title(self) -> str:  # type: ignore[override]
        """Human form, as shown in tables: ``Running``."""
        return self.value.capitalize()


P, S, R, C, F = State.PENDING, State.SCHEDULED, State.RUNNING, State.COMPLETED, State.FAILED

#: Every legal state change. Anything not listed here raises IllegalTransition.
TRANSITIONS: dict[State, frozenset[State]] = {
    P: frozenset({S, C, F}),  # placed; stopped before placement; rejected
    S: frozenset({R, C, F, P}),  # started; stopped before start; start failed; node lost
    R: frozenset({C, F, P}),  # exit 0 or stopped; exit != 0; node lost -> reschedule
    C: frozenset({S, P}),  # restart policy "always"; reschedule
    F: frozenset({S, P}),  # restart in place; reschedule
}

#: States in which no container of the task should be running.
TERMINAL: frozenset[State] = frozenset({C, F})


def can_transition(current: State, target: State) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: State, target: State) -> None:
    """Raise :class:`IllegalTransition` naming both states unless the table allows it."""
    if not can_transition(current, target):
        raise IllegalTransition(current.title, target.title)
