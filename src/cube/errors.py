"""The one exception hierarchy of Cube.

Every error a user can meet is a :class:`CubeError`. Each subclass carries the
meaning of the failure, not its transport: the HTTP layer maps them to status
codes in exactly one place (:mod:`cube.api.errors`) and the CLI maps them to
exit codes in exactly one place (:mod:`cube.cli.errors`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass


class CubeError(Exception):
    """Base class of every error Cube raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of user input, e.g. ``resources.memory``."""

    field: str
    message: str
    #: Where in the decoded input it is (pydantic's location), when known: a file's reader
    #: turns it into a line and column. Not shown, not compared.
    loc: tuple[str | int, ...] = dataclasses.field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidSpec(CubeError):
    """User input (a task spec, a request body, a flag) is not valid.

    Carries one :class:`FieldError` per problem so that every message names the field.
    """

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid input")


class PayloadTooLarge(InvalidSpec):
    """A request body or field is larger than Cube accepts."""


class NotFound(CubeError):
    """A task, node or container that does not exist."""


class Conflict(CubeError):
    """The request contradicts the current state (e.g. same task ID, other spec)."""


class IllegalTransition(CubeError):
    """A task state change that the transition table does not allow."""

    def __init__(self, current: str, target: str) -> None:
        self.current = current
        self.target = target
        super().__init__(f"illegal task transition {current} -> {target}")


class RuntimeUnavailable(CubeError):
    """The container runtime (the Docker engine) cannot be reached."""


class ContainerError(CubeError):
    """The container runtime refused an operation (bad image, pull failure, ...)."""


class Unavailable(CubeError):
    """A remote Cube component (manager or worker) cannot be reached."""


class CannotListen(CubeError):
    """An agent cannot listen on its address: the port is taken, or not this user's."""


class StoreUnavailable(CubeError):
    """The store cannot be read or written: a corrupt, unreadable or read-only file.

    The message names the file and what to do about it.
    """


class StoreFull(StoreUnavailable):
    """A write was refused because the store's file system is full; nothing was saved."""
