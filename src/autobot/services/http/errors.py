"""Errors as the client sees them: every one JSON `{"error": <code>, "detail": <text>, ...}`.

Malformed JSON is 400 `malformed_json`; validation failures are 422 `invalid_request` with a readable `detail`
and the per-field `errors`; unknown routes keep their 404/405; unexpected exceptions are a logged 500 that
never echoes internals to the caller.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from autobot.middleware.asgi import error_body, error_code, error_response

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client should see: HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status_code: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.detail, **self.extra)

    def response(self) -> JSONResponse:
        return error_response(self.status_code, self.code, self.detail, **self.extra)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only loc/msg/type: pydantic's `input` may echo a huge or sensitive body, `ctx` may not be JSON-safe.
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": err.get("type"),
        }
        for err in exc.errors()
    ]


async def _api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    if any(err["type"] == "json_invalid" for err in errors):
        return error_response(400, "malformed_json", "request body is not valid JSON")
    readable = "; ".join(f"{'.'.join(err['loc'])}: {err['msg']}" for err in errors)
    return error_response(422, "invalid_request", readable or "invalid request", errors=errors)


async def _http_exception_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, error_code(exc.status_code), str(exc.detail), headers=exc.headers)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(HTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
