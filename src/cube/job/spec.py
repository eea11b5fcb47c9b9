"""What a user writes: the job file, validated with errors that name the field path.

A job is Cube's unit of work, as in Nomad (job -> group -> task)::

    job: shop
    type: service                 # service | batch | system
    datacenters: [dc1]
    constraints: {zone: a}        # node labels every group needs; a group may add its own
    groups:
      - name: web
        count: 3                  # copies of the group; each copy is one *allocation*
        reschedule: {attempts: 5, delay: 10s, max_delay: 5m}
        tasks:                    # task specs, exactly as for `cube run`
          - name: api
            image: cube-busybox:latest
          - name: proxy
            image: cube-busybox:latest
            ports: ["8080"]

* A **group**'s tasks run together on one node and reach each other by task name; one
  copy of a group is an **allocation**. The scheduler places a group as one unit: the
  sum of its tasks' resources (:func:`placement_spec`).
* ``type`` says what "done" means. ``service``: keep ``count`` allocations running.
  ``batch``: run each allocation to completion, ``parallelism`` at a time. ``system``:
  one allocation on every eligible node, so a system group has no ``count``.
* ``reschedule`` says how an allocation that failed for good (its restart policy gave
  up, on the node) is *replaced*, on another node: ``attempts`` replacements at most
  (none: no limit), the n-th one ``delay * backoff**(n-1)`` after the failure, capped at
  ``max_delay``. Left out, each type has its own default (:func:`reschedule_policy`).

Errors name the path of the field as the user wrote it: ``groups[0].tasks[1].image``
(:mod:`cube.job.parse` reads the text and tells the errors).
Shape errors (types, ranges, unknown fields) come from pydantic; the rules that span
fields (unique names, ``count`` on a system job, a host port pinned twice in a group,
constraints that contradict each other) are checked once the shape is right.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from cube.errors import FieldError, InvalidSpec
from cube.node import Resources as NodeResources
from cube.task.parse import _key
from cube.task.spec import (
    NAME_PATTERN,
    Mount,
    PortMapping,
    Resources,
    Seconds,
    TaskSpec,
    _Model,
)

#: Where a node is when it does not say (``cube worker --datacenter``), as in Nomad.
DEFAULT_DATACENTER = "dc1"
#: Allocations of one group; far above what one manager serves, well below a typo's 10**9.
MAX_COUNT = 100_000
MAX_GROUPS = 100
MAX_TASKS_PER_GROUP = 32

#: Constraints: node label -> the value it must have (the same limits as a task's).
_Labels = dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]]
#: A datacenter name is a DNS label, like every other name in a job file.
_Datacenter = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]


class JobType(StrEnum):
    SERVICE = "service"
    BATCH = "batch"
    SYSTEM = "system"


class ReschedulePolicy(_Model):
    """How the manager replaces an allocation that failed for good.

    Restarts in place are the task's ``restart`` policy, on the node; rescheduling starts
    where restarting gives up: a new allocation, on another node if one fits (a system
    job's on the same node). ``attempts: null`` means no limit (a service's default).
    An allocation lost with its node is replaced at once and uses no attempt: it did
    not fail.
    """

    attempts: int | None = Field(default=None, ge=0, le=1_000_000)
    delay: Seconds = 5.0
    backoff: float = Field(default=2.0, ge=1.0, le=10.0)
    max_delay: Seconds = 300.0

    def delay_before(self, attempt: int) -> float:
        """Seconds between a failure and the ``attempt``-th replacement (1-based)."""
        try:
            grown = self.delay * self.backoff ** max(attempt - 1, 0)
        except OverflowError:  # a float power past 1e308: far beyond any cap
            return self.max_delay
        return min(grown, self.max_delay)

    def exhausted(self, done: int) -> bool:
        """Whether ``done`` replacements use up the policy."""
        return self.attempts is not None and done >= self.attempts


#: Defaults by job type, in the spirit of Nomad's: a service retries forever (slower and
#: slower, up to 5 minutes apart), a batch job a few times (a program that fails three
#: times in a row will likely fail a fourth, and the job should say Failed).
DEFAULT_RESCHEDULE: Mapping[JobType, ReschedulePolicy] = {
    JobType.SERVICE: ReschedulePolicy(attempts=None, delay=5.0, max_delay=300.0),
    JobType.BATCH: ReschedulePolicy(attempts=3, delay=5.0, max_delay=60.0),
    JobType.SYSTEM: ReschedulePolicy(attempts=None, delay=5.0, max_delay=300.0),
}


class UpdateOrder(StrEnum):
    STOP_FIRST = "stop-first"  # stop an old allocation, then start its replacement
    START_FIRST = "start-first"  # start the replacement; stop the old one once it is healthy


class UpdatePolicy(_Model):
    """How a new version replaces a service or system group's allocations (a *deployment*).

    At most ``max_parallel`` allocations are replaced at a time; the next batch starts when
    the previous one is healthy: every task running and passing its health check (or,
    without a check, running) for ``min_healthy_time``. An allocation not healthy within
    ``healthy_deadline`` of its placement, or no allocation becoming healthy for
    ``progress_deadline``, fails the deployment; ``auto_revert`` then goes back to the last
    version whose deployment succeeded. ``canary: N`` first starts N allocations of the
    new version beside the old ones and waits for ``cube job promote``.
    """

    max_parallel: int = Field(default=1, ge=1, le=MAX_COUNT)
    order: UpdateOrder = UpdateOrder.STOP_FIRST
    min_healthy_time: Seconds = 10.0
    healthy_deadline: Seconds = 120.0
    progress_deadline: Seconds = 600.0
    auto_revert: StrictBool = False
    canary: int = Field(default=0, ge=0, le=MAX_COUNT)


DEFAULT_UPDATE = UpdatePolicy()


class GroupSpec(_Model):
    """One group: tasks that run together on a node, ``count`` copies of it."""

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    count: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="allocations (default 1; not for system)"
    )
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_TASKS_PER_GROUP)
    constraints: _Labels = Field(
        default_factory=dict, max_length=64, description="node labels, added to the job's"
    )
    reschedule: ReschedulePolicy | None = None
    parallelism: int | None = Field(
        default=None, ge=1, le=MAX_COUNT, description="batch: allocations running at once"
    )
    update: UpdatePolicy | None = Field(default=None, description="replaces the job's update")

    @property
    def wanted(self) -> int:
        """How many allocations a service or batch group asks for."""
        return 1 if self.count is None else self.count


class JobSpec(_Model):
    """The whole job file. Immutable; a changed file is a new version of the job."""

    job: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    type: JobType = JobType.SERVICE
    datacenters: list[_Datacenter] = Field(
        default_factory=lambda: [DEFAULT_DATACENTER], min_length=1, max_length=64
    )
    constraints: _Labels = Field(default_factory=dict, max_length=64)
    groups: list[GroupSpec] = Field(min_length=1, max_length=MAX_GROUPS)
    update: UpdatePolicy | None = None

    @model_validator(mode="after")
    def _rules_across_fields(self) -> JobSpec:
        # InvalidSpec is not a ValueError, so pydantic lets it through unchanged, and the
        # paths built here (``groups[1].name``) reach the user as written.
        problems = list(_problems(self))
        if problems:
            raise InvalidSpec(problems)
        return self

    def group(self, name: str) -> GroupSpec:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)


def _duplicates(names: Sequence[str]) -> Iterator[int]:
    """Indexes of the names already seen earlier in the list."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            yield i
        seen.add(name)


def _problems(spec: JobSpec) -> Iterator[FieldError]:
    """The rules that span fields, each error at the path of the field to change."""
    for i in _duplicates(spec.datacenters):
        yield FieldError(f"datacenters[{i}]", f"{spec.datacenters[i]!r} is listed twice")
    if spec.type is JobType.BATCH and spec.update is not None:
        yield FieldError("update", "a batch job runs to completion: it has no rolling update")
    if spec.update is not None:
        yield from _deadline_problems(spec.update, "update")
    for i in _duplicates([g.name for g in spec.groups]):
        yield FieldError(f"groups[{i}].name", f"another group is named {spec.groups[i].name!r}")
    for g, group in enumerate(spec.groups):
        at = f"groups[{g}]"
        if spec.type is JobType.SYSTEM and group.count is not None:
            yield FieldError(
                f"{at}.count", "a system job runs one allocation per eligible node: remove count"
            )
        if spec.type is not JobType.BATCH and group.parallelism is not None:
            yield FieldError(f"{at}.parallelism", "only batch jobs have parallelism")
        yield from _update_problems(spec, group, at)
        for t in _duplicates([task.name for task in group.tasks]):
            name = group.tasks[t].name
            yield FieldError(f"{at}.tasks[{t}].name", f"another task of the group is {name!r}")
        yield from _pinned_ports(group, at)
        yield from _contradictions(spec, group, at)


def _deadline_problems(policy: UpdatePolicy, where: str) -> Iterator[FieldError]:
    if policy.healthy_deadline <= policy.min_healthy_time:
        yield FieldError(
            f"{where}.healthy_deadline",
            "must be longer than min_healthy_time: no allocation could be healthy in time",
        )
    if policy.progress_deadline < policy.healthy_deadline:
        yield FieldError(
            f"{where}.progress_deadline",
            "must be at least healthy_deadline: the deployment would fail before its"
            " allocations could",
        )


def _update_problems(spec: JobSpec, group: GroupSpec, at: str) -> Iterator[FieldError]:
    if group.update is not None and spec.type is JobType.BATCH:
        yield FieldError(f"{at}.update", "a batch job runs to completion: it has no rolling update")
    policy, where = (group.update, f"{at}.update") if group.update else (spec.update, "update")
    if group.update is not None:  # the job's own is checked once, in _problems
        yield from _deadline_problems(group.update, where)
    if policy is None or spec.type is not JobType.SYSTEM:
        return
    # One allocation per node: a second copy beside the first would share its node's ports.
    if policy.canary:
        yield FieldError(f"{where}.canary", "a system job runs one allocation per node: no canary")
    if policy.order is UpdateOrder.START_FIRST:
        yield FieldError(
            f"{where}.order", "a system job runs one allocation per node: only stop-first"
        )


def _pinned_ports(group: GroupSpec, at: str) -> Iterator[FieldError]:
    """A host port can be published once per node, so once per group."""
    owner: dict[tuple[int, str], str] = {}
    for t, task in enumerate(group.tasks):
        for p, port in enumerate(task.ports):
            if not port.host:
                continue
            key = (port.host, port.protocol.value)
            if key in owner and owner[key] != task.name:
                yield FieldError(
                    f"{at}.tasks[{t}].ports[{p}]",
                    f"host port {port.host}/{port.protocol} is also published by task"
                    f" {owner[key]!r}: tasks of a group share a node",
                )
            owner.setdefault(key, task.name)


def _contradictions(spec: JobSpec, group: GroupSpec, at: str) -> Iterator[FieldError]:
    """Constraints of the job, the group and its tasks that no node could satisfy at once."""
    wanted = dict(spec.constraints)
    for key, value in group.constraints.items():
        if wanted.get(key, value) != value:
            yield FieldError(
                f"{at}.constraints.{_key(key)}",
                f"the job requires {key}={wanted[key]}; no node can have both",
            )
        wanted.setdefault(key, value)
    for t, task in enumerate(group.tasks):
        for key, value in task.constraints.items():
            if wanted.get(key, value) != value:
                yield FieldError(
                    f"{at}.tasks[{t}].constraints.{_key(key)}",
                    f"the job or group requires {key}={wanted[key]}; no node can have both",
                )


# --- what the scheduler and the reconciler read from a group -------------------------------


def group_constraints(spec: JobSpec, group: GroupSpec) -> dict[str, str]:
    """Every node label the group's node must have: the job's, the group's, its tasks'."""
    wanted = dict(spec.constraints)
    wanted.update(group.constraints)
    for task in group.tasks:
        wanted.update(task.constraints)
    return wanted


def group_resources(group: GroupSpec) -> NodeResources:
    """What one allocation of the group reserves on its node: the sum of its tasks'."""
    total = NodeResources()
    for task in group.tasks:
        r = task.resources
        total = total + NodeResources(cpu=r.cpu, memory=r.memory, disk=r.disk)
    return total


def group_ports(group: GroupSpec) -> list[PortMapping]:
    """Every port the group's tasks publish (each task's own, in task order)."""
    return [port for task in group.tasks for port in task.ports]


def placement_spec(spec: JobSpec, group: GroupSpec) -> TaskSpec:
    """One allocation as the existing scheduler sees a task: a group is placed as one unit.

    The scheduler's filters (resources, host ports, labels, privileges) read a
    :class:`TaskSpec`; this one carries the group's summed resources, all its ports, all
    its constraints and every privilege any of its tasks asks for. It is never run.
    """
    total = group_resources(group)
    mounts: list[Mount] = [m for task in group.tasks for m in task.mounts]
    network: Literal["bridge", "host", "none"] = (
        "host" if any(t.network == "host" for t in group.tasks) else "bridge"
    )
    return TaskSpec(
        name=group.name,
        image=group.tasks[0].image,
        ports=group_ports(group),
        resources=Resources(cpu=total.cpu, memory=total.memory, disk=total.disk),
        privileged=any(t.privileged for t in group.tasks),
        network=network,
        mounts=mounts,
        constraints=group_constraints(spec, group),
    )


def update_policy(spec: JobSpec, group: GroupSpec) -> UpdatePolicy:
    """The group's update policy: its own, else the job's, else the defaults."""
    return group.update or spec.update or DEFAULT_UPDATE


def reschedule_policy(spec: JobSpec, group: GroupSpec) -> ReschedulePolicy:
    """The group's reschedule policy, or its job type's default."""
    return group.reschedule or DEFAULT_RESCHEDULE[spec.type]
