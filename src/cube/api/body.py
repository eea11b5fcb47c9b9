"""Reading request bodies: JSON or YAML, size-limited, validated with field names."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel

from cube.errors import FieldError, InvalidSpec, PayloadTooLarge
from cube.task.model import Task
from cube.task.parse import decode_spec_text, parse_request
from cube.task.spec import TaskRequest

#: Largest request body accepted: a spec is a few KiB; 1 MiB leaves room for big env blocks.
MAX_BODY = 1024 * 1024


async def read_body(request: Request) -> Any:
    """Decode a JSON body, or a YAML one when the Content-Type says so."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise PayloadTooLarge([FieldError("body", f"larger than {MAX_BODY} bytes")])
    if not data.strip():
        raise InvalidSpec([FieldError("body", "empty request body")])
    content_type = request.headers.get("content-type", "")
    return decode_spec_text(bytes(data), fmt="yaml" if "yaml" in content_type else "json")


async def read_task_request(request: Request) -> TaskRequest:
    return parse_request(await read_body(request))


#: ``POST /v1/tasks`` answers 201 with a new task, and 200 when the request repeats one.
RESUBMITTED: dict[int | str, dict[str, Any]] = {
    200: {"model": Task, "description": "The same ID and spec again: the existing task."}
}

#: OpenAPI description of a body read by :func:`read_task_request` (FastAPI cannot infer it).
TASK_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TaskRequest"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/TaskRequest"}},
        },
    }
}


def publish_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add models that routes read by hand (see TASK_REQUEST_BODY) to the OpenAPI schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
