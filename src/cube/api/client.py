"""Client side of Cube's HTTP APIs: turning error answers back into Cube errors.

The inverse of :mod:`cube.api.errors`, so a caller of a remote API sees the same
exception a local call would raise (``NotFound``, ``InvalidSpec`` with its fields...).
"""

from __future__ import annotations

import httpx

from cube import errors
from cube.errors import FieldError

_BY_CODE: dict[str, type[errors.CubeError]] = {
    "not_found": errors.NotFound,
    "conflict": errors.Conflict,
    "illegal_transition": errors.Conflict,
    "runtime_unavailable": errors.RuntimeUnavailable,
    "unavailable": errors.Unavailable,
    "container_error": errors.ContainerError,
    "store_full": errors.StoreFull,
    "store_unavailable": errors.StoreUnavailable,
}


#: The longest piece of an answer an error message repeats.
MAX_SHOWN = 1000


def one_line(text: object) -> str:
    """Text from the other side, fit for one line of a log or a terminal: runs of
    whitespace (newlines too) become one space, other control characters go, and a long
    text (an HTML error page from a proxy, say) is cut."""
    kept = "".join(c if c.isprintable() or c.isspace() else " " for c in str(text))
    line = " ".join(kept.split())
    return line if len(line) <= MAX_SHOWN else line[:MAX_SHOWN] + "..."


def error_from_response(response: httpx.Response) -> errors.CubeError:
    """The CubeError an error response stands for."""
    try:
        body = response.json()
        code, message = str(body.get("error", "")), one_line(body.get("message", ""))
        fields = [
            FieldError(one_line(f["field"]), one_line(f["message"]))
            for f in body.get("fields") or []
        ]
    except (ValueError, AttributeError, KeyError, TypeError):
        code, message, fields = "", one_line(response.text), []
    message = message or f"HTTP {response.status_code} from {response.request.url}"
    if response.status_code == 413:
        return errors.PayloadTooLarge(fields or [FieldError("body", message)])
    if response.status_code == 422 or code in ("invalid_spec", "invalid_request"):
        return errors.InvalidSpec(fields or [FieldError("", message)])
    if response.status_code == 401:
        return errors.CubeError(f"unauthorized: {message}")
    return _BY_CODE.get(code, errors.CubeError)(message)


def check(response: httpx.Response) -> httpx.Response:
    """Return the response if it succeeded, else raise the matching CubeError."""
    if response.is_success:
        return response
    raise error_from_response(response)


def unreachable(url: str, exc: Exception) -> errors.Unavailable:
    return errors.Unavailable(f"cannot reach {url}: {str(exc) or type(exc).__name__}")
