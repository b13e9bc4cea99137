"""ASGI plumbing shared by the middlewares and the service apps: the request head, and the one error shape.

Every refusal a service sends, whoever sends it (a route handler, the body size limit, the service-auth
middleware), is JSON `{"error": <code>, "detail": <text>, ...extra}`: `error` is a stable machine-readable
code (by default the status's name in `ERROR_CODES`), `detail` is for people, extra fields carry numbers a
client can act on (`limit_bytes`, `file_id`, ...). The ASGI types are Starlette's (`starlette.types`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope

# The `error` code of a refusal that has no more specific one.
ERROR_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    503: "service_unavailable",
}


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, "error")


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The error shape; also what a streamed response sends in its `error` event once headers are out."""
    return {"error": code, "detail": detail, **extra}


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An error response in the one shape; it is also an ASGI app, so pure-ASGI middleware can send it."""
    return JSONResponse(error_body(code, detail, **extra), status_code=status, headers=headers)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (given lower-case), or None. The scope's names are lower-cased here
    too, rather than trusting every server to have done it."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def content_length(scope: Scope) -> int | None:
    """The declared Content-Length, or None when absent or not a number (the body is then counted instead)."""
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
