"""What a user asks for: the task spec, validated with errors that name the field.

A spec is what goes in a YAML/JSON file or a ``POST /v1/tasks`` body::

    name: web
    image: cube-busybox:latest
    command: ["httpd", "-f", "-p", "8080"]
    ports: ["8080:8080"]          # or [{container: 8080, host: 8080}]
    resources: {cpu: 0.5, memory: 64MiB, disk: 100MiB}
    restart: {policy: on-failure, max_attempts: 3, delay: 1s}
    health: {http: {path: /, port: 8080}, interval: 5s}

Sizes and durations are parsed here, once, into bytes and seconds. How a document
becomes a request, and how its errors read: :mod:`cube.task.parse`.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_serializer,
    field_validator,
    model_validator,
)

from cube.units import parse_duration, parse_size

#: Names are DNS labels, like Kubernetes object names: they end up in container names.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
#: Image references: registry/repo:tag@digest, conservatively.
IMAGE_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]{0,254}$"
#: Environment variable names, as POSIX shells take them.
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_KEY = re.compile(ENV_KEY_PATTERN)

MAX_CPU = 1024.0
MAX_MEMORY = 1 << 50  # 1 PiB: anything larger is a typo
MIN_MEMORY = 6 * 1024**2  # the Docker engine refuses a smaller memory limit
MAX_DURATION = 7 * 24 * 3600.0


def _bounds(minimum: float, maximum: float) -> Callable[[dict[str, Any]], None]:
    """JSON schema bounds for a parsed field: pydantic cannot put ``ge``/``le`` behind a
    ``BeforeValidator`` into the schema (it leaves them as unknown keywords)."""

    def extra(schema: dict[str, Any]) -> None:
        schema.pop("ge", None)
        schema.pop("le", None)
        schema.update(minimum=minimum, maximum=maximum)

    return extra


Bytes = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=0, le=MAX_MEMORY, json_schema_extra=_bounds(0, MAX_MEMORY)),
]
Seconds = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0, le=MAX_DURATION, json_schema_extra=_bounds(0, MAX_DURATION)),
]
#: Memory a container may be limited to: Bytes, with the engine's floor (checked by
#: Resources._memory_floor, to say it in MiB).
Memory = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=0, le=MAX_MEMORY, json_schema_extra=_bounds(MIN_MEMORY, MAX_MEMORY)),
]


class _Model(BaseModel):
    """Base of every spec model: unknown fields are an error, not silently ignored.

    Booleans, integers and floats are strict (``StrictBool`` and friends): ``read_only: 0``
    or ``privileged: "yes"`` is an error, not a guess. Sizes and durations keep their
    short forms (``64MiB``, ``5s``): they are parsed, once, by their own validators.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


#: Docker's short form of a port: ``[IP:][HOST:]CONTAINER[/PROTOCOL]``, IPv6 in brackets.
_PORT_SHORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):)?"
    r"(?:(?P<host>\d*):)?(?P<container>\d+)(?:/(?P<protocol>[a-z]+))?$"
)


def _check_ip(value: str | None) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
    return value


class PortMapping(_Model):
    """A container port, optionally published on the node at ``host`` (0 = any free port),
    on ``host_ip`` only if given (else the worker's ``--port-address``, else every address)."""

    container: StrictInt = Field(ge=1, le=65535)
    host: StrictInt | None = Field(default=None, ge=0, le=65535)
    host_ip: Annotated[str | None, AfterValidator(_check_ip)] = Field(
        default=None,
        max_length=45,
        pattern=r"^[0-9A-Fa-f:.]+$",
        description="the node's address to publish on, e.g. 127.0.0.1 or ::1",
    )
    protocol: Protocol = Protocol.TCP

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """Accept Docker's short forms: ``"8080"``, ``"8080:80"``, ``"53:53/udp"``, ``80``,
        ``"127.0.0.1:8080:80"``, ``"[::1]:8080:80"``, ``"127.0.0.1::80"`` (any free port)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return {"container": value}
        if not isinstance(value, str):
            return value
        match = _PORT_SHORT.match(value)
        if match is None or (match["host"] == "" and not match["ip"]):
            raise ValueError(
                f"invalid port {value!r}: use CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER, "
                "and add /udp for UDP"
            )
        out: dict[str, Any] = {
            "container": int(match["container"]),
            "protocol": match["protocol"] or "tcp",
        }
        if match["host"] is not None:
            out["host"] = int(match["host"] or 0)
        if match["ip"]:
            out["host_ip"] = match["ip"].strip("[]")
            out.setdefault("host", 0)
        return out

    @model_validator(mode="after")
    def _published_if_addressed(self) -> PortMapping:
        if self.host_ip is not None and self.host is None:
            raise ValueError("host_ip needs host (0 for any free port)")
        return self


class Resources(_Model):
    """What the task reserves on its node. CPU in cores; memory and disk in bytes.

    CPU and memory become container limits; disk is accounted by the scheduler
    (Docker cannot cap a container's writable layer on every storage driver).
    """

    cpu: StrictFloat = Field(default=0.1, gt=0, le=MAX_CPU)
    memory: Memory = Field(default=64 * 1024**2)
    disk: Bytes = Field(default=0)

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, value: int) -> int:
        if value < MIN_MEMORY:
            raise ValueError("must be at least 6MiB (the Docker engine's minimum)")
        return value


class RestartPolicyName(StrEnum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class RestartPolicy(_Model):
    """When the worker restarts a task's container, and how long it waits between tries.

    The n-th restart waits ``delay * backoff**(n-1)``, capped at ``max_delay``.
    ``max_attempts`` counts restarts (not the first start); ``None`` means no limit.
    """

    policy: RestartPolicyName = RestartPolicyName.NEVER
    max_attempts: StrictInt | None = Field(default=None, ge=0, le=1_000_000)
    delay: Seconds = 1.0
    backoff: StrictFloat = Field(default=2.0, ge=1.0, le=10.0)
    max_delay: Seconds = 30.0

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """``restart: on-failure`` is short for ``restart: {policy: on-failure}``."""
        return {"policy": value} if isinstance(value, str) else value


class HttpCheck(_Model):
    port: StrictInt = Field(ge=1, le=65535)
    path: str = Field(default="/", max_length=1024, pattern=r"^/")
    expected_status: StrictInt = Field(default=200, ge=100, le=599)


class TcpCheck(_Model):
    port: StrictInt = Field(ge=1, le=65535)


class HealthCheck(_Model):
    """A probe of the task's container; exactly one of ``http`` or ``tcp``."""

    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    interval: Seconds = 5.0
    timeout: Seconds = 2.0
    failure_threshold: StrictInt = Field(default=3, ge=1, le=100)
    start_period: Seconds = 0.0

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("give exactly one of 'http' or 'tcp'")
        return self


class Mount(_Model):
    """A host directory bind-mounted into the container (read-only unless said otherwise)."""

    source: str = Field(min_length=1, max_length=4096, pattern=r"^/")
    target: str = Field(min_length=1, max_length=4096, pattern=r"^/")
    read_only: StrictBool = True


class Privilege(StrEnum):
    """What a spec may ask for that a node must explicitly allow (see ``cube worker --allow``)."""

    PRIVILEGED = "privileged"
    HOST_NETWORK = "host-network"
    HOST_MOUNTS = "host-mounts"


#: What an answer, a label or a log shows in place of a secret env value.
HIDDEN = "<secret>"
#: Serialization contexts (``model_dump(context=...)``). Without one, secret env values are
#: shown as HIDDEN: every API answer and log. KEEP_SECRETS is for the few places that must
#: carry them: the stores (files of mode 0600), the manager's request to a worker, the CLI's
#: request to the manager. FOR_LABELS hides every env value, secret or not: container
#: labels are readable by anyone who may run ``docker inspect``.
KEEP_SECRETS: dict[str, str] = {"env": "keep"}
FOR_LABELS: dict[str, str] = {"env": "hide-all"}

EnvText = Annotated[str, Field(max_length=32768)]


class SecretValue(_Model):
    """An env value no answer, label or log shows: ``{secret: true, value: ...}``."""

    secret: Literal[True]
    value: EnvText


def _env_mode(info: SerializationInfo) -> str:
    context = info.context
    return str(context.get("env", "")) if isinstance(context, dict) else ""


def _split_command(value: Any) -> Any:
    """``command: "sleep 60"`` is split like a shell would; a list is taken as is."""
    return shlex.split(value) if isinstance(value, str) else value


class TaskSpec(_Model):
    """Everything a user says about one task. Immutable once submitted."""

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    image: str = Field(min_length=1, max_length=255, pattern=IMAGE_PATTERN)
    command: Annotated[
        list[Annotated[str, Field(max_length=4096)]], BeforeValidator(_split_command)
    ] = Field(default_factory=list, max_length=256)
    # Names are checked by _env_keys (to name the variable) and shown in the schema.
    env: dict[str, EnvText | SecretValue] = Field(
        default_factory=dict,
        max_length=256,
        json_schema_extra={"propertyNames": {"pattern": ENV_KEY_PATTERN}},
        description="a value, or {secret: true, value: ...} for one no answer shows back",
    )
    ports: list[PortMapping] = Field(default_factory=list, max_length=64)
    resources: Resources = Field(default_factory=Resources)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    health: HealthCheck | None = None
    privileged: StrictBool = Field(default=False, description="full access to the host's devices")
    network: Literal["bridge", "host", "none"] = "bridge"
    mounts: list[Mount] = Field(default_factory=list, max_length=32)
    stop_timeout: Seconds = Field(
        default=5.0, description="grace period between SIGTERM and SIGKILL when stopping"
    )
    labels: dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]] = (
        Field(default_factory=dict, max_length=64)
    )
    constraints: dict[
        Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]
    ] = Field(default_factory=dict, max_length=64, description="node labels the task requires")

    @field_validator("env")
    @classmethod
    def _env_keys(cls, value: dict[str, str | SecretValue]) -> dict[str, str | SecretValue]:
        for key in value:
            if not _ENV_KEY.match(key):
                raise ValueError(f"invalid variable name {key!r}")
        return value

    @field_serializer("env")
    def _hide_secrets(
        self, env: dict[str, str | SecretValue], info: SerializationInfo
    ) -> dict[str, Any]:
        """Secret values become HIDDEN unless the context is KEEP_SECRETS (see there)."""
        mode = _env_mode(info)
        out: dict[str, Any] = {}
        for key, value in env.items():
            if isinstance(value, str):
                out[key] = HIDDEN if mode == "hide-all" else value
            else:
                shown = value.value if mode == "keep" else HIDDEN
                out[key] = {"secret": True, "value": shown}
        return out

    def env_values(self) -> dict[str, str]:
        """The environment the container gets: every value, in clear."""
        return {k: v if isinstance(v, str) else v.value for k, v in self.env.items()}

    @property
    def env_hidden(self) -> bool:
        """Whether env values were lost (a spec rebuilt from a container's label)."""
        return HIDDEN in self.env_values().values()

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, value: list[PortMapping]) -> list[PortMapping]:
        seen: set[tuple[int, str]] = set()
        for p in value:
            if p.host:
                key = (p.host, p.protocol.value)
                if key in seen:
                    raise ValueError(f"host port {p.host}/{p.protocol} is published twice")
                seen.add(key)
        return value


def privileges(spec: TaskSpec) -> set[Privilege]:
    """What the spec asks for beyond an ordinary, isolated container."""
    wanted: set[Privilege] = set()
    if spec.privileged:
        wanted.add(Privilege.PRIVILEGED)
    if spec.network == "host":
        wanted.add(Privilege.HOST_NETWORK)
    if spec.mounts:
        wanted.add(Privilege.HOST_MOUNTS)
    return wanted


def alloc_name(job: str, group: str, index: int) -> str:
    """``shop.web[2]``: the ``index``-th allocation of ``group`` of ``job``."""
    return f"{job}.{group}[{index}]"


class AllocRef(BaseModel):
    """The allocation of a job that a task belongs to (see :mod:`cube.job`).

    Set by the manager only, on the tasks it creates for a job's allocation; a task run
    on its own (``cube run``) has none. A worker runs the tasks of one allocation
    together: on one private network where each reaches the others by task name, with
    ``CUBE_JOB``, ``CUBE_GROUP``, ``CUBE_ALLOC_INDEX`` and ``CUBE_TASK`` in their
    environment. An allocation of one task needs no network of its own (:attr:`shared`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    job: str = Field(min_length=1, max_length=63)
    group: str = Field(min_length=1, max_length=63)
    index: int = Field(ge=0)
    #: How many tasks the group has. None in records (and container labels) from before
    #: Cube sent it: those allocations were given a network, and keep it.
    size: int | None = Field(default=None, ge=1, le=1000)

    @property
    def name(self) -> str:
        """``shop.web[2]``: how people (and Nomad) name an allocation."""
        return alloc_name(self.job, self.group, self.index)

    @property
    def shared(self) -> bool:
        """Whether its tasks share a private network: only when there are several.

        A network per allocation would cap a worker at the engine's address pools (about 30
        bridge networks by default), so a group of one task goes without.
        """
        return self.size is None or self.size > 1


class TaskRequest(TaskSpec):
    """The body of ``POST /v1/tasks``: a spec, plus an optional client-chosen ID.

    Giving the ID makes the request idempotent: sending it twice runs one task. ``alloc``
    is for the manager's calls to workers: the manager's own API refuses it.
    """

    id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    alloc: AllocRef | None = None

    def spec(self) -> TaskSpec:
        return TaskSpec.model_validate(
            self.model_dump(exclude={"id", "alloc"}, context=KEEP_SECRETS)
        )
