"""Task specs and units: parsed once at the edge, with errors that name the field."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cube.errors import InvalidSpec
from cube.task.parse import decode_spec_text, parse_request
from cube.task.spec import (
    FOR_LABELS,
    HIDDEN,
    KEEP_SECRETS,
    HealthCheck,
    PortMapping,
    Protocol,
    RestartPolicyName,
    TaskRequest,
    TaskSpec,
)
from cube.task.specfile import load_spec_file
from cube.units import format_size, parse_duration, parse_size
from tests.support.paths import EXAMPLES

KiB, MiB, GiB = 1024, 1024**2, 1024**3
BASE: dict[str, Any] = {"name": "web", "image": "cube-busybox:latest"}


def spec(**fields: Any) -> TaskRequest:
    return parse_request({**BASE, **fields})


def invalid(**fields: Any) -> dict[str, str]:
    """The field -> message map of the InvalidSpec that ``fields`` must raise."""
    with pytest.raises(InvalidSpec) as excinfo:
        parse_request({**BASE, **fields})
    errors = {e.field: e.message for e in excinfo.value.errors}
    assert errors, "InvalidSpec must carry at least one FieldError"
    for field in errors:
        assert field in str(excinfo.value), "the message names every field"
    return errors


# --------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 * MiB),
        ("1.5GB", 1_500_000_000),
        ("512k", 512_000),
        ("1GiB", GiB),
        ("2Ki", 2 * KiB),
        (" 64 mib ", 64 * MiB),
        ("100", 100),
        ("0", 0),
        ("10b", 10),
        (4096, 4096),
        (1.9, 1),
    ],
)
def test_parse_size(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


BAD_SIZES: list[Any] = [
    "", "MiB", "abc", "-1", "-1MiB", "64XB", "1e3", "1.5.5MB", "64 M iB",
    True, -1, math.inf, math.nan, None, [64], {"MiB": 64},
]  # fmt: skip
BAD_DURATIONS: list[Any] = [
    "", "s", "5x", "1m 30s", "-5s", "ms5", "5d", "1.5.5s",
    True, -1, math.inf, math.nan, None, ["5s"],
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_SIZES)
def test_parse_size_rejects(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"size"):
        parse_size(bad)


def test_parse_size_rejects_absurdly_long_numbers() -> None:
    """Found by the fuzz test below: float('1' + 400 zeros) is inf; int(inf) overflowed."""
    with pytest.raises(ValueError, match=r"size"):
        parse_size("1" + "0" * 400 + "MiB")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("1h1m1s", 3661.0),
        (" 5S ", 5.0),
        ("10", 10.0),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | int | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", BAD_DURATIONS)
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=1023), st.sampled_from([1, KiB, MiB, GiB]))
def test_format_size_round_trips_whole_units(n: int, unit: int) -> None:
    """Whole B/KiB/MiB/GiB values print exactly: ``64 MiB -> '64MiB' -> 64 MiB``."""
    assert parse_size(format_size(n * unit)) == n * unit


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_is_close_for_any_size(n: int) -> None:
    """One decimal keeps any size within 5% of the truth."""
    assert parse_size(format_size(n)) == pytest.approx(n, rel=0.05, abs=1)


# --------------------------------------------------------- field-named errors


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"resources": {"memory": "1MiB"}}, "resources.memory", "6MiB"),
        ({"resources": {"memory": "lots"}}, "resources.memory", "invalid size"),
        ({"resources": {"cpu": 0}}, "resources.cpu", "greater than 0"),
        ({"ports": ["http"]}, "ports.0", "invalid port"),
        ({"ports": [80, "80/sctp"]}, "ports.1.protocol", ""),
        ({"restart": "sometimes"}, "restart.policy", ""),
        ({"restart": {"delay": "soon"}}, "restart.delay", "invalid duration"),
        ({"name": "Web_1"}, "name", "pattern"),
        ({"name": ""}, "name", ""),
        ({"env": {"1BAD": "x"}}, "env", "invalid variable name"),
        ({"bogus": 1}, "bogus", "unknown field; the fields here: alloc, command"),
        ({"health": {"http": {"port": 8080, "path": "no-slash"}}}, "health.http.path", ""),
        ({"command": "sh -c 'oops"}, "command", "quotation"),
    ],
)
def test_errors_name_the_field(fields: dict[str, Any], field: str, fragment: str) -> None:
    errors = invalid(**fields)
    assert field in errors, errors
    assert fragment in errors[field]


def test_the_fields_of_a_place_are_listed_once_however_many_unknown_fields_it_has() -> None:
    """A YAML alias bomb gives ten unknown keys: one list of the fields, not ten (the
    answer must not grow with the input: tests/e2e/test_security.py)."""
    errors = invalid(**{f"a{i}": i for i in range(10)}, comand=["sh"])
    lists = [m for m in errors.values() if m.startswith("unknown field; the fields here:")]
    assert len(lists) == 1, errors
    assert errors["comand"] == "unknown field; did you mean 'command'?"  # still told
    assert sorted(m for m in errors.values() if m == "unknown field") == ["unknown field"] * 9


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mounts": [{"source": "/a", "target": "/b", "read_only": 0}]}, "mounts.0.read_only"),
        ({"privileged": "yes"}, "privileged"),
        ({"resources": {"cpu": True}}, "resources.cpu"),
        ({"resources": {"cpu": "0.5"}}, "resources.cpu"),
        ({"ports": [{"container": 80.0}]}, "ports.0.container"),
        ({"ports": [{"container": "80"}]}, "ports.0.container"),
        ({"restart": {"max_attempts": True}}, "restart.max_attempts"),
        ({"restart": {"max_attempts": 2.5}}, "restart.max_attempts"),
        ({"health": {"tcp": {"port": "80"}}}, "health.tcp.port"),
    ],
)
def test_booleans_and_numbers_are_strict(fields: dict[str, Any], field: str) -> None:
    """API input is JSON: ``read_only: 0`` is not ``false``, ``"80"`` is not a port number."""
    assert field in invalid(**fields)


def test_the_schema_carries_every_limit_the_validators_enforce() -> None:
    """A schema-valid request must not be refused for a limit only the code knows."""
    schema = TaskRequest.model_json_schema()
    resources = schema["$defs"]["Resources"]["properties"]
    assert resources["memory"]["minimum"] == 6 * 1024**2
    assert resources["disk"]["minimum"] == 0
    assert "ge" not in resources["memory"]  # pydantic's keyword, not JSON schema's
    names = schema["properties"]["env"]["propertyNames"]["pattern"]
    assert re.match(names, "GREETING")
    assert not re.match(names, "1BAD")
    assert schema["properties"]["stop_timeout"]["maximum"] == 7 * 24 * 3600


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(InvalidSpec) as excinfo:
        parse_request({})
    assert {e.field for e in excinfo.value.errors} == {"name", "image"}


@pytest.mark.parametrize("body", [[], "name: web", None, 42])
def test_body_must_be_a_mapping(body: Any) -> None:
    with pytest.raises(InvalidSpec) as excinfo:
        parse_request(body)
    assert [e.field for e in excinfo.value.errors] == ["body"]


# ------------------------------------------------------------- short forms


@pytest.mark.parametrize(
    ("short", "container", "host", "protocol"),
    [
        ("8080:80", 80, 8080, Protocol.TCP),
        ("53/udp", 53, None, Protocol.UDP),
        ("53:53/udp", 53, 53, Protocol.UDP),
        ("8080", 8080, None, Protocol.TCP),
        (80, 80, None, Protocol.TCP),
        ({"container": 80, "host": 0}, 80, 0, Protocol.TCP),
    ],
)
def test_port_short_forms(
    short: str | int | dict[str, int], container: int, host: int | None, protocol: Protocol
) -> None:
    assert spec(ports=[short]).ports == [
        PortMapping(container=container, host=host, protocol=protocol)
    ]


@pytest.mark.parametrize(
    ("short", "host_ip", "host"),
    [
        ("127.0.0.1:8080:80", "127.0.0.1", 8080),
        ("[::1]:8080:80", "::1", 8080),
        ("127.0.0.1::80", "127.0.0.1", 0),
        ({"container": 80, "host": 8080, "host_ip": "127.0.0.1"}, "127.0.0.1", 8080),
    ],
)
def test_a_port_may_name_the_host_address(short: Any, host_ip: str, host: int) -> None:
    """Docker's ``IP:HOST:CONTAINER``, and ``host_ip`` in the long form."""
    (port,) = spec(ports=[short]).ports
    assert (port.host_ip, port.host, port.container) == (host_ip, host, 80)


@pytest.mark.parametrize(
    "bad",
    [
        ":80",
        "80:",
        "a:80",
        "0",
        "70000",
        "8080:80:80",
        True,
        "999.0.0.1:8080:80",
        "localhost:8080:80",
        {"container": 80, "host": 1, "host_ip": "example.com"},
        {"container": 80, "host_ip": "127.0.0.1"},  # an address, but nothing published
    ],
)
def test_bad_ports(bad: Any) -> None:
    assert any(f.startswith("ports.0") for f in invalid(ports=[bad]))


def test_a_host_port_is_published_once_per_protocol() -> None:
    assert "published twice" in invalid(ports=["8080:80", "8080:81"])["ports"]
    assert len(spec(ports=["53:53", "53:53/udp"]).ports) == 2


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("sleep 60", ["sleep", "60"]),
        ("sh -c 'echo hi there'", ["sh", "-c", "echo hi there"]),
        (["sh", "-c", "echo $HOME"], ["sh", "-c", "echo $HOME"]),
        ("", []),
    ],
)
def test_command_string_is_split_like_a_shell(
    command: str | list[str], expected: list[str]
) -> None:
    assert spec(command=command).command == expected


def test_restart_shorthand() -> None:
    restart = spec(restart="on-failure").restart
    assert restart.policy is RestartPolicyName.ON_FAILURE
    assert (restart.max_attempts, restart.delay) == (None, 1.0)
    assert spec(restart={"policy": "always", "delay": "500ms"}).restart.delay == 0.5


def test_health_check_needs_exactly_one_probe() -> None:
    http, tcp = {"port": 8080}, {"port": 8080}
    assert "exactly one" in invalid(health={"interval": "5s"})["health"]
    assert "exactly one" in invalid(health={"http": http, "tcp": tcp})["health"]
    check = spec(health={"tcp": tcp, "interval": "1m"}).health
    assert isinstance(check, HealthCheck)
    assert (check.tcp is not None, check.http, check.interval) == (True, None, 60.0)


def test_spec_drops_the_request_id() -> None:
    request = spec(id="req-1", env={"A": "1"})
    task_spec = request.spec()
    assert type(task_spec) is TaskSpec
    assert not hasattr(task_spec, "id")
    assert task_spec.model_dump() == request.model_dump(exclude={"id", "alloc"})
    assert invalid(id="no spaces")["id"]


# ------------------------------------------------------------------- files


def test_examples_load() -> None:
    web = load_spec_file(EXAMPLES / "web.yaml")
    assert (web.name, web.image) == ("web", "cube-busybox:latest")
    assert web.command == ["httpd", "-f", "-p", "8080", "-h", "/www"]
    assert web.ports == [PortMapping(container=8080, host=8080)]
    assert (web.resources.cpu, web.resources.memory) == (0.25, 32 * MiB)
    assert (web.restart.policy, web.restart.max_attempts) == (RestartPolicyName.ON_FAILURE, 3)
    assert web.health is not None
    assert web.health.http is not None
    assert (web.health.http.port, web.health.http.path) == (8080, "/")

    sleeper = load_spec_file(EXAMPLES / "sleeper.json")
    assert (sleeper.name, sleeper.command) == ("sleeper", ["sleep", "3600"])
    for request in (web, sleeper):  # the JSON the API returns parses back to the same
        assert parse_request(request.model_dump(mode="json")) == request


def test_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "web.yml"
    yaml_file.write_text("name: web\nimage: cube-busybox:latest\ncommand: sleep 5\n")
    json_file = tmp_path / "web.JSON"
    json_file.write_text(json.dumps({**BASE, "command": ["sleep", "5"]}))
    assert load_spec_file(yaml_file) == load_spec_file(json_file)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InvalidSpec, match="cannot read spec file") as excinfo:
        load_spec_file(path)
    assert excinfo.value.errors[0].field == str(path)


@pytest.mark.parametrize(
    ("name", "text", "expected", "where"),
    [
        ("broken.yaml", "name: [web\nimage: x\n", "not valid YAML", ":2:6"),
        ("broken.json", '{"name": "web",\n "image": }', "not valid JSON", ":2:11"),
        ("list.yaml", "- name: web\n", "expected a mapping", ""),
    ],
)
def test_broken_files_name_the_file_and_the_place(
    tmp_path: Path, name: str, text: str, expected: str, where: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidSpec, match=expected) as excinfo:
        load_spec_file(path)
    assert [e.field for e in excinfo.value.errors] == [f"{path}{where}"]


def test_invalid_fields_of_a_file_say_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "web.yaml"
    path.write_text(
        "name: web\nimage: x\nresources:\n  cpu: 0.25\n  memory: 1MiB\n"
        'ports: ["8080:8080", "bad"]\nrestart:\n  policy: on-failure\n  max_atempts: 3\n'
    )
    with pytest.raises(InvalidSpec) as excinfo:
        load_spec_file(path)
    assert sorted(str(e) for e in excinfo.value.errors) == [
        f"{path}:5:3: resources.memory: must be at least 6MiB (the Docker engine's minimum)",
        f"{path}:6:22: ports.1: invalid port 'bad': use CONTAINER, HOST:CONTAINER"
        " or IP:HOST:CONTAINER, and add /udp for UDP",
        f"{path}:9:3: restart.max_atempts: unknown field; did you mean 'max_attempts'?",
    ]
    as_json = tmp_path / "web.json"
    as_json.write_text('{\n  "name": "web",\n  "image": "x",\n  "resources": {"memory": "1MiB"}\n}')
    with pytest.raises(InvalidSpec, match=r"web.json:4:17: resources.memory: must be"):
        load_spec_file(as_json)
    missing = tmp_path / "noname.yaml"
    missing.write_text("image: x\n")
    with pytest.raises(InvalidSpec, match=r"noname.yaml:1:1: name: Field required$"):
        load_spec_file(missing)


def test_a_bad_env_value_in_a_file_is_one_error_with_its_line(tmp_path: Path) -> None:
    """An env value has two forms, and pydantic gives an error for each: the file's errors
    stay one per field, each with its own position (the fuzz test found a crash here)."""
    path = tmp_path / "env.yaml"
    path.write_text("name: web\nimage: x\nenv:\n  A: [1]\n  B: {secret: true}\n")
    with pytest.raises(InvalidSpec) as excinfo:
        load_spec_file(path)
    errors = sorted(str(e) for e in excinfo.value.errors)
    assert errors[0] == f"{path}:4:3: env.A: expected a string, or {{secret: true, value: STRING}}"
    assert errors[1].startswith(f"{path}:5:3: env.B")
    assert len(errors) == 2, errors


def test_yaml_with_odd_keys_is_invalid_not_a_crash() -> None:
    with pytest.raises(InvalidSpec):
        parse_request(decode_spec_text("name: web\nimage: x\n1: 2\nnull: 3\n"))


# ------------------------------------------------------------- fuzzing

SPEC_KEYS = [*TaskRequest.model_fields, "bogus"]
SUB_KEYS = [
    "cpu", "memory", "disk", "policy", "max_attempts", "delay", "backoff", "max_delay",
    "http", "tcp", "port", "path", "interval", "timeout", "container", "host", "protocol",
]  # fmt: skip
unitish = st.from_regex(r"\A-?\d{0,400}(\.\d{0,3})?\s?(ms|[a-zA-Z]{0,3})\Z")
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | unitish
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(SUB_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


spec_like = st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=8), json_like, max_size=6)


@settings(deadline=None, max_examples=500)
@given(json_like | spec_like | spec_like.map(lambda fields: {**BASE, **fields}))
def test_parse_request_only_raises_invalid_spec(data: Any) -> None:
    outcome: TaskRequest | InvalidSpec
    try:
        outcome = parse_request(data)
    except InvalidSpec as exc:
        outcome = exc
    event("valid" if isinstance(outcome, TaskRequest) else "invalid")
    if isinstance(outcome, InvalidSpec):
        assert outcome.errors
        assert all(e.field and e.message for e in outcome.errors)
    else:  # what the API returns as JSON must parse back to the same request
        assert parse_request(outcome.model_dump(mode="json")) == outcome


# ----------------------------------------------------------------- secret env


def test_secret_env_values_are_hidden_unless_kept() -> None:
    """Every answer and log shows HIDDEN; the stores and the requests between agents keep the
    value (KEEP_SECRETS); container labels carry no env value at all (FOR_LABELS)."""
    request = parse_request(
        {"name": "a", "image": "b", "env": {"A": "1", "S": {"secret": True, "value": "pw"}}}
    )
    assert request.spec().env_values() == {"A": "1", "S": "pw"}  # the container's
    shown = request.model_dump(mode="json")["env"]
    assert shown == {"A": "1", "S": {"secret": True, "value": HIDDEN}}
    assert "pw" not in request.model_dump_json()
    assert "pw" not in repr(request.model_dump())
    kept = TaskRequest.model_validate_json(request.model_dump_json(context=KEEP_SECRETS))
    assert kept == request
    label = TaskSpec.model_validate_json(request.spec().model_dump_json(context=FOR_LABELS))
    assert label.env_values() == {"A": HIDDEN, "S": HIDDEN}
    assert label.env_hidden
    assert not request.spec().env_hidden


def test_a_secret_env_value_must_say_secret_true() -> None:
    assert list(invalid(env={"S": {"value": "pw"}})) == ["env.S"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (1, "{secret: true, value: STRING}"),
        ({"value": "pw"}, "{secret: true, value: STRING}"),
        ("x" * 40000, "at most 32768"),
        ({"secret": True, "value": "x" * 40000}, "at most 32768"),
    ],
)
def test_a_bad_env_value_is_one_error_naming_the_variable(value: Any, fragment: str) -> None:
    """Not one error per form an env value may take (``env.A.constrained-str``...)."""
    errors = invalid(env={"A": value})
    assert list(errors) == ["env.A"], errors
    assert fragment in errors["env.A"]
