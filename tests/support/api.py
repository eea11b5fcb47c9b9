"""HTTP calls from tests to the agents they started, with the test session's token.

Every agent a test starts gets the same random token through the environment
(``CUBE_TOKEN``, ``CUBE_JOIN_TOKEN``, ``CUBE_WORKER_TOKEN``, set in conftest), so
one ``Authorization`` header opens managers and workers alike. The tests of
authentication itself (tests/e2e/test_security.py) use distinct tokens on purpose.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import httpx

#: The token every agent started by the tests accepts.
TOKEN = os.environ.setdefault("CUBE_TOKEN", secrets.token_urlsafe(32))
os.environ.setdefault("CUBE_JOIN_TOKEN", TOKEN)
os.environ.setdefault("CUBE_WORKER_TOKEN", TOKEN)

HEADERS = {"Authorization": f"Bearer {TOKEN}"}

#: Built once: httpx builds a TLS context (~50 ms) for every call that is not given one.
_TLS = httpx.create_ssl_context()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    headers = {**HEADERS, **kwargs.pop("headers", {})}
    kwargs.setdefault("verify", _TLS)
    return httpx.request(method, url, headers=headers, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return request("DELETE", url, **kwargs)
