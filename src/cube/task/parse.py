"""From what a user wrote to a validated task request: decoding spec text (YAML or JSON),
and pydantic's errors told as :class:`~cube.errors.FieldError` that name the field.

Apart from :mod:`cube.task.spec`, which says what a valid spec *is* (the models and their
limits): this module says how a document becomes one and how a refusal reads, for the
API's bodies, ``cube run`` and, with line numbers, :mod:`cube.task.specfile`. Job specs
(:mod:`cube.job.spec`) decode their text and quote their keys here too.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from cube.errors import FieldError, InvalidSpec
from cube.task.spec import TaskRequest
from cube.task.unknown_fields import UnknownFields

#: The longest key an error message repeats: an unknown key can be a whole body long.
MAX_KEY_SHOWN = 64


def _key(part: str | int) -> str:
    """A step of a field path as a user may read it: a key with a newline or an escape
    sequence is quoted, so that an error stays one line and cannot drive a terminal."""
    text = str(part)
    if len(text) > MAX_KEY_SHOWN:
        text = text[:MAX_KEY_SHOWN] + "..."
    return text if text.isprintable() else repr(text)


def field_errors(
    exc: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None
) -> list[FieldError]:
    """Turn pydantic's errors into ``FieldError`` with dotted paths (``resources.memory``)."""
    return [error for _, error in located_errors(exc, prefix=prefix, model=model)]


def located_errors(
    exc: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None
) -> list[tuple[tuple[str | int, ...], FieldError]]:
    """Each error of :func:`field_errors` with the location it names in the input, so that
    a spec file can say on which line it is. Not one per pydantic error: an env value's
    two forms make one error, and repeats are left out. ``model``: the one validated, so
    that an unknown field is told the field it may have meant."""
    out: list[tuple[tuple[str | int, ...], FieldError]] = []
    unknown = UnknownFields(model) if model is not None else None
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and unknown is not None:
            message = unknown(loc)
        if _ENV_UNION in loc or "SecretValue" in loc:  # an env value: one error, not one per form
            as_text = _ENV_UNION in loc
            cut = loc.index(_ENV_UNION if as_text else "SecretValue")
            whole = cut == len(loc) - 1  # about the value itself, not a field of a secret
            if whole and as_text != isinstance(err["input"], str):
                continue  # a string was given and this is the secret form's error, or back
            loc = loc[:cut]
            message = message if err["type"] == "string_too_long" else ENV_VALUE_FORMS
        path = ".".join(_key(p) for p in loc)
        path = f"{prefix}.{path}" if prefix and path else (prefix or path)
        error = FieldError(path or "body", message)
        if all(error != seen for _, seen in out):
            out.append((loc, error))
    return out


#: How pydantic names the plain-string form of an env value in an error's location.
_ENV_UNION = "constrained-str"
ENV_VALUE_FORMS = "expected a string, or {secret: true, value: STRING}"


def parse_request(data: Any) -> TaskRequest:
    """Validate decoded JSON/YAML as a task request, raising :class:`InvalidSpec`."""
    if not isinstance(data, dict):
        raise InvalidSpec(
            [FieldError("body", "expected a mapping of spec fields (name, image, ...)")]
        )
    try:
        return TaskRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpec(field_errors(exc, model=TaskRequest)) from None


#: libyaml's parser where PyYAML has it: as safe, and it refuses nesting deeper than 1000
#: levels at once, where the pure-Python parser first spends seconds of CPU (quadratic in the
#: depth) on a few KiB of "[[[[...": seconds of a server's event loop, per request.
_YAML_LOADER: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


def decode_spec_text(text: str | bytes, *, fmt: Literal["json", "yaml"] = "yaml") -> Any:
    """Decode a spec document. YAML is a superset of JSON, so ``yaml`` reads both."""
    try:
        if fmt == "json":
            return json.loads(text)
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        raise InvalidSpec([FieldError("body", f"not valid YAML: {yaml_problem(exc)}")]) from None
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidSpec([FieldError("body", f"not valid {fmt.upper()}: {first}")]) from None
    except RecursionError:  # both parsers recurse: "[[[[..." a few thousand deep, well under 1 MiB
        raise InvalidSpec([FieldError("body", f"{fmt.upper()} nested too deeply")]) from None


def yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """What is wrong, then what the parser was doing: ``expected ',' or ']', but got ':'
    (while parsing a flow sequence)``. The first line of ``str(exc)`` is only the context
    (``while parsing a flow node``), which does not say what to fix."""
    problem, context = (exc.problem or "").strip(), (exc.context or "").strip()
    if problem and context:
        return f"{problem} ({context})"
    return problem or context or type(exc).__name__
