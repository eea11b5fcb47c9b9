"""Job files, cube.job.spec: valid ones parse, and every error names its field path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cube.errors import InvalidSpec
from cube.job.parse import field_path, is_job_document, load_job_file, parse_job, parse_job_text
from cube.job.spec import (
    DEFAULT_RESCHEDULE,
    JobSpec,
    JobType,
    ReschedulePolicy,
    group_constraints,
    group_resources,
    placement_spec,
    reschedule_policy,
)
from cube.node import Resources
from cube.task.parse import decode_spec_text
from cube.task.spec import PortMapping
from tests.support.paths import EXAMPLES

MiB = 1024**2

#: The job file of issue 13, as written there (the proxy's command shortened).
ISSUE_EXAMPLE = """
job: shop
type: service                 # service | batch | system
datacenters: [dc1]            # nodes say theirs with `cube worker --datacenter` (default dc1)
constraints: {zone: a}        # optional, as for tasks; a group may add its own
groups:
  - name: web
    count: 3                  # copies of the group; each copy is one *allocation*
    tasks:
      - name: api
        image: cube-busybox:latest
        command: ["httpd", "-f", "-p", "8000", "-h", "/www"]
        resources: {cpu: 0.25, memory: 32MiB}
      - name: proxy
        image: cube-busybox:latest
        command: ["httpd", "-f", "-p", "8080"]
        ports: ["8080"]       # container port; host port chosen per allocation unless pinned
        health: {http: {port: 8080, path: /}}
"""


def task(name: str = "api", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "cube-busybox:latest", **fields}


def job(groups: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    return {"job": "shop", "groups": groups or [{"name": "web", "tasks": [task()]}], **fields}


def errors_of(data: Any) -> dict[str, str]:
    """The field -> message map of the InvalidSpec that ``data`` must raise."""
    with pytest.raises(InvalidSpec) as excinfo:
        parse_job(data)
    errors = {e.field: e.message for e in excinfo.value.errors}
    assert errors, "InvalidSpec must carry at least one FieldError"
    for path in errors:
        assert path in str(excinfo.value), "the message names every field"
    return errors


# --- valid files ---------------------------------------------------------------------------


def test_the_issue_s_example_parses() -> None:
    spec = parse_job_text(ISSUE_EXAMPLE)

    assert (spec.job, spec.type, spec.datacenters, spec.constraints) == (
        "shop",
        JobType.SERVICE,
        ["dc1"],
        {"zone": "a"},
    )
    (web,) = spec.groups
    assert (web.name, web.count, web.wanted) == ("web", 3, 3)
    api, proxy = web.tasks
    assert api.command == ["httpd", "-f", "-p", "8000", "-h", "/www"]
    assert (api.resources.cpu, api.resources.memory) == (0.25, 32 * MiB)
    assert proxy.ports == [PortMapping(container=8080)]
    assert proxy.health is not None


def test_defaults() -> None:
    spec = parse_job(job())
    assert spec.type is JobType.SERVICE
    assert spec.datacenters == ["dc1"]
    assert (spec.groups[0].count, spec.groups[0].wanted) == (None, 1)
    assert reschedule_policy(spec, spec.groups[0]) == DEFAULT_RESCHEDULE[JobType.SERVICE]
    batch = parse_job(job(type="batch"))
    assert reschedule_policy(batch, batch.groups[0]).attempts == 3


def test_json_and_yaml_give_the_same_job(tmp_path: Path) -> None:
    yaml_file = tmp_path / "shop.yaml"
    yaml_file.write_text(ISSUE_EXAMPLE)
    json_file = tmp_path / "shop.json"
    json_file.write_text(json.dumps(parse_job_text(ISSUE_EXAMPLE).model_dump(mode="json")))

    assert load_job_file(yaml_file) == load_job_file(json_file)


def test_a_group_is_placed_as_one_unit() -> None:
    spec = parse_job(
        job(
            [
                {
                    "name": "web",
                    "constraints": {"disk": "ssd"},
                    "tasks": [
                        task("api", resources={"cpu": 0.25, "memory": "32MiB", "disk": "1MiB"}),
                        task("proxy", ports=["8080", "9000:9000"], constraints={"arch": "x86"}),
                    ],
                }
            ],
            constraints={"zone": "a"},
        )
    )
    web = spec.groups[0]

    assert group_resources(web) == Resources(cpu=0.35, memory=96 * MiB, disk=1 * MiB)
    assert group_constraints(spec, web) == {"zone": "a", "disk": "ssd", "arch": "x86"}
    unit = placement_spec(spec, web)
    assert (unit.resources.cpu, unit.resources.memory) == (pytest.approx(0.35), 96 * MiB)
    assert unit.ports == [PortMapping(container=8080), PortMapping(container=9000, host=9000)]
    assert unit.constraints == {"zone": "a", "disk": "ssd", "arch": "x86"}


def test_a_group_asks_for_every_privilege_of_its_tasks() -> None:
    """The scheduler's privilege filter sees what any task of the group needs."""
    plain = parse_job(job([{"name": "g", "tasks": [task("a"), task("b")]}]))
    unit = placement_spec(plain, plain.groups[0])
    assert (unit.network, unit.privileged, unit.mounts) == ("bridge", False, [])

    mount = {"source": "/srv", "target": "/data"}
    tasks = [task("a", privileged=True), task("b", network="host", mounts=[mount])]
    wanting = parse_job(job([{"name": "g", "tasks": tasks}]))
    unit = placement_spec(wanting, wanting.groups[0])
    assert (unit.network, unit.privileged, len(unit.mounts)) == ("host", True, 1)


@pytest.mark.parametrize(
    ("policy", "delays", "ten_thousandth"),
    [
        (ReschedulePolicy(delay=5, backoff=2, max_delay=30), [5, 10, 20, 30, 30], 30),
        (ReschedulePolicy(delay=1, backoff=1, max_delay=30), [1, 1, 1, 1, 1], 1),
    ],
)
def test_reschedule_delays_back_off_up_to_the_cap(
    policy: ReschedulePolicy, delays: list[float], ten_thousandth: float
) -> None:
    assert [policy.delay_before(n) for n in range(1, 6)] == delays
    assert policy.delay_before(10_000) == ten_thousandth  # 2.0**9999 overflows a float


def test_examples_are_jobs_that_parse() -> None:
    """Every job file in examples/ parses; the three the README shows are there."""
    jobs = {}
    for path in sorted(EXAMPLES.glob("*.*")):
        if is_job_document(decode_spec_text(path.read_text())):
            jobs[path.name] = load_job_file(path)
    assert {"shop.yaml", "batch.yaml", "system.yaml"} <= set(jobs)

    shop = jobs["shop.yaml"]
    assert (shop.type, shop.groups[0].wanted, [t.name for t in shop.groups[0].tasks]) == (
        JobType.SERVICE,
        3,
        ["api", "proxy"],
    )
    assert "http://api:8000/" in shop.groups[0].tasks[1].command[-1]
    batch = jobs["batch.yaml"]
    assert (batch.type, batch.groups[0].count, batch.groups[0].parallelism) == (
        JobType.BATCH,
        10,
        3,
    )
    assert jobs["system.yaml"].type is JobType.SYSTEM


def test_task_specs_are_not_jobs() -> None:
    assert not is_job_document({"name": "web", "image": "busybox"})
    assert not is_job_document(["job"])
    assert is_job_document({"job": "shop"})


# --- bad files -----------------------------------------------------------------------------


def one_group(**fields: Any) -> dict[str, Any]:
    return job([{"name": "web", "tasks": [task()], **fields}])


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        (job(groups=None) | {"groups": []}, "groups", "at least 1 item"),
        ({"groups": [{"name": "web", "tasks": [task()]}]}, "job", "Field required"),
        (job(jobs="x"), "jobs", "unknown field; did you mean 'job'?"),
        (job(type="cron"), "type", "'service', 'batch' or 'system'"),
        (job(job="Shop!"), "job", "should match pattern"),
        (job(datacenters=[]), "datacenters", "at least 1 item"),
        (job(datacenters=["dc1", "DC 2"]), "datacenters[1]", "should match pattern"),
        (job(datacenters=["dc1", "dc1"]), "datacenters[1]", "'dc1' is listed twice"),
        (job(constraints=["zone=a"]), "constraints", "valid dictionary"),
        (one_group(count=-1), "groups[0].count", "greater than or equal to 0"),
        (one_group(count=1_000_000), "groups[0].count", "less than or equal to 100000"),
        (one_group(count="many"), "groups[0].count", "valid integer"),
        (one_group(tasks=[]), "groups[0].tasks", "at least 1 item"),
        (one_group(size=3), "groups[0].size", "unknown field; the fields here: constraints, count"),
        (one_group(reschedule={"attempts": -1}), "groups[0].reschedule.attempts", ">= 0"),
        (one_group(reschedule={"delay": "soon"}), "groups[0].reschedule.delay", "invalid"),
        (one_group(reschedule={"interval": "1h"}), "groups[0].reschedule.interval", "unknown"),
        (one_group(parallelism=2), "groups[0].parallelism", "only batch jobs"),
        (
            job(type="system", groups=[{"name": "a", "count": 2, "tasks": [task()]}]),
            "groups[0].count",
            "one allocation per eligible node",
        ),
    ],
)
def test_bad_jobs_name_the_field(data: dict[str, Any], path: str, message: str) -> None:
    errors = errors_of(data)
    assert path in errors, errors
    assert message.replace(">= 0", "greater than or equal to 0") in errors[path]


@pytest.mark.parametrize(
    ("tasks", "path", "message"),
    [
        ([task("api"), task("proxy", image="bad image")], "groups[0].tasks[1].image", "pattern"),
        ([task(resources={"memory": "1KiB"})], "groups[0].tasks[0].resources.memory", "6MiB"),
        ([task(ports=["http"])], "groups[0].tasks[0].ports[0]", "invalid port"),
        ([task(restart="sometimes")], "groups[0].tasks[0].restart.policy", "'never'"),
        ([task(colour="red")], "groups[0].tasks[0].colour", "unknown field; the fields here:"),
        ([task("api"), task("api")], "groups[0].tasks[1].name", "another task of the group"),
        (
            [task("a", ports=["8080:80"]), task("b", ports=["8080:81"])],
            "groups[0].tasks[1].ports[0]",
            "host port 8080/tcp is also published by task 'a'",
        ),
        (
            [task("a", constraints={"zone": "b"})],
            "groups[0].tasks[0].constraints.zone",
            "requires zone=a",
        ),
    ],
)
def test_bad_tasks_name_their_path(tasks: list[dict[str, Any]], path: str, message: str) -> None:
    errors = errors_of(job([{"name": "web", "tasks": tasks}], constraints={"zone": "a"}))
    assert path in errors, errors
    assert message in errors[path]


def test_group_names_are_unique_within_the_job() -> None:
    groups = [{"name": n, "tasks": [task()]} for n in ("web", "db", "web")]
    assert errors_of(job(groups)) == {"groups[2].name": "another group is named 'web'"}


def test_one_task_may_publish_a_port_for_tcp_and_udp() -> None:
    spec = parse_job(one_group(tasks=[task("dns", ports=["53:53", "53:53/udp"])]))
    assert len(spec.groups[0].tasks[0].ports) == 2
    assert errors_of(one_group(tasks=[task("a", ports=["53:53"]), task("b", ports=["53:53"])]))


def test_a_group_constraint_that_contradicts_the_job_s_is_refused() -> None:
    errors = errors_of(one_group(constraints={"zone": "b"}) | {"constraints": {"zone": "a"}})
    assert errors == {
        "groups[0].constraints.zone": "the job requires zone=a; no node can have both"
    }


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of(
        job([{"name": "web", "count": -1, "tasks": [task(image=""), task("x", cpu=1)]}], kind=1)
    )
    assert set(errors) == {
        "kind",
        "groups[0].count",
        "groups[0].tasks[0].image",
        "groups[0].tasks[1].cpu",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a mapping of job fields"),
        ("job: [unclosed", "not valid YAML"),
        ("", "expected a mapping of job fields"),
    ],
)
def test_text_that_is_not_a_job_file(text: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as excinfo:
        parse_job_text(text)
    assert message in str(excinfo.value)
    assert excinfo.value.errors[0].field == "body"


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="cannot read job file"):
        load_job_file(tmp_path / "missing.yaml")


def test_field_paths_read_as_written() -> None:
    assert field_path(("groups", 0, "tasks", 1, "image")) == "groups[0].tasks[1].image"
    assert field_path(("groups", 0, "constraints", "a\nb")) == "groups[0].constraints.'a\\nb'"
    assert field_path(()) == ""


# --- properties ----------------------------------------------------------------------------

NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z0-9]\Z")


@st.composite
def job_files(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(list(JobType)))
    groups = []
    for name in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True)):
        tasks = [task(t) for t in draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))]
        group: dict[str, Any] = {"name": name, "tasks": tasks}
        if kind is not JobType.SYSTEM:
            group["count"] = draw(st.integers(0, 100))
        if kind is JobType.BATCH:
            group["parallelism"] = draw(st.none() | st.integers(1, 10))
        groups.append(group)
    return {"job": draw(NAMES), "type": kind.value, "groups": groups}


@settings(max_examples=100)
@given(job_files())
def test_a_parsed_job_round_trips_through_json(data: dict[str, Any]) -> None:
    spec = parse_job(data)
    again = parse_job(json.loads(spec.model_dump_json()))
    assert again == spec
    assert isinstance(again, JobSpec)


@settings(max_examples=100)
@given(job_files(), st.sampled_from(["name", "image"]), st.text(max_size=5))
def test_a_bad_task_field_is_named_by_its_path(data: dict[str, Any], key: str, junk: str) -> None:
    """Any task of any group, broken: the error names that group and task."""
    g = len(data["groups"]) - 1
    t = len(data["groups"][g]["tasks"]) - 1
    data["groups"][g]["tasks"][t][key] = junk + " !"  # a space is valid in neither
    assert f"groups[{g}].tasks[{t}].{key}" in errors_of(data)
