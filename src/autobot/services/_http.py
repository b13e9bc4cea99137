"""FastAPI plumbing shared by the four service apps (main-backend, npu-worker, ai-stack, browser-service).

What each service gets from here, so they all behave the same at the edges:
- `ApiError` + `install_error_handlers(app)`: every error is JSON `{"error": <code>, "detail": <text>, ...}`.
  Malformed JSON is 400 `malformed_json`; validation failures are 422 `invalid_request` with a readable
  `detail` and the per-field `errors`; unknown routes keep their 404/405; unexpected exceptions are a logged
  500 that never echoes internals to the caller.
- `BodySizeLimitMiddleware`: refuses oversize bodies with 413 before they are read or spooled to disk
  (Content-Length up front, streamed bytes counted for chunked uploads). Works on any FastAPI version.
- `Readiness` + `add_health_routes(app, service_id, readiness)`: GET /api/health is liveness (no I/O);
  GET /api/ready runs the registered checks concurrently with a timeout and answers 503 naming what failed.
  `redis_ping_check(client)` is the usual Redis check.
- `lifespan_with_stack(setup)`: a lifespan whose resources are closed in reverse order on shutdown, and also
  when start-up fails half way (so a failed start never leaks a pool or a file handle).
- `sse_event(event, data)`: one server-sent event, JSON data.
- `service_app(...)` and `open_redis(...)`: the scaffolding every service's `create_app` starts from (the
  above wired together the same way in each), so a service only adds its own routes and resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autobot.config import RedisConfig
from autobot.redis_pool import create_redis

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[object]]
"""A readiness check returns (any value) when the dependency is usable and raises when it is not."""

LifespanSetup = Callable[[FastAPI, contextlib.AsyncExitStack], Awaitable[None]]


class ApiError(Exception):
    """An error the client should see: HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status_code: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.extra = extra


def error_response(
    status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status_code, headers=headers)


_STATUS_CODES: dict[int, str] = {
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
    503: "service_unavailable",
}


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
    return error_response(exc.status_code, exc.code, exc.detail, **exc.extra)


async def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    if any(err["type"] == "json_invalid" for err in errors):
        return error_response(400, "malformed_json", "request body is not valid JSON")
    readable = "; ".join(f"{'.'.join(err['loc'])}: {err['msg']}" for err in errors)
    return error_response(422, "invalid_request", readable or "invalid request", errors=errors)


async def _http_exception_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


class BodySizeLimitMiddleware:
    """Pure ASGI: refuse request bodies larger than `limit_for(scope)` bytes (None = no limit) with 413.

    A declared Content-Length over the limit is refused before any byte is read. Otherwise the streamed
    bytes are counted and the receive call raises an HTTPException(413) once the limit is passed, which
    FastAPI's body reading re-raises and the error handlers render.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = _too_large(limit)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int) -> JSONResponse:
    return error_response(
        413, "payload_too_large", f"request body exceeds the limit of {limit} bytes", limit_bytes=limit
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Readiness:
    """Named readiness checks, filled in by the lifespan once the resources they probe exist."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    def clear(self) -> None:
        self._checks.clear()

    async def run(self) -> dict[str, str]:
        """Run every check concurrently; map name -> "ok" or "failed: <reason>"."""
        if not self._checks:
            return {"startup": "failed: the service has not finished starting"}
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._one(self._checks[n]) for n in names))
        return dict(zip(names, outcomes, strict=True))

    async def _one(self, check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            return f"failed: no answer within {self.timeout_s:g}s"
        except Exception as exc:
            return f"failed: {type(exc).__name__}: {exc}"
        return "ok"


def redis_ping_check(client: Redis) -> ReadinessCheck:
    async def check() -> None:
        if not await client.ping():
            raise RuntimeError("PING did not answer PONG")

    return check


def add_health_routes(app: FastAPI, service_id: str, readiness: Readiness) -> None:
    started = time.monotonic()

    @app.get("/api/health", tags=["health"])
    async def health() -> dict[str, Any]:
        # Liveness only: no I/O, so a slow dependency never gets a healthy process restarted.
        return {"status": "ok", "service": service_id, "uptime_s": round(time.monotonic() - started, 3)}

    @app.get("/api/ready", tags=["health"])
    async def ready() -> JSONResponse:
        checks = await readiness.run()
        failed = sorted(name for name, outcome in checks.items() if outcome != "ok")
        if failed:
            return error_response(
                503, "not_ready", f"{service_id} not ready: {', '.join(failed)} failed", checks=checks
            )
        return JSONResponse({"status": "ready", "service": service_id, "checks": checks})


def lifespan_with_stack(
    setup: LifespanSetup,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Build a lifespan from `setup(app, stack)`: setup opens resources and registers closing them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await setup(app, stack)
            yield

    return lifespan


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    """Encode one server-sent event; JSON data stays on one line, so no payload can break the framing."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def post_body_limit(max_bytes: int) -> Callable[[Scope], int | None]:
    """A `BodySizeLimitMiddleware` limit: `max_bytes` for POST bodies, none for other methods."""

    def limit_for(scope: Scope) -> int | None:
        return max_bytes if scope["method"] == "POST" else None

    return limit_for


def open_redis(config: RedisConfig, stack: contextlib.AsyncExitStack, readiness: Readiness) -> Redis:
    """Open the service's Redis client inside a lifespan: closed with `stack`, probed as readiness "redis".

    The readiness checks are cleared when the stack unwinds, so a stopped (or half-started) service never
    reports ready.
    """
    redis = create_redis(config)
    stack.push_async_callback(redis.aclose, close_connection_pool=True)
    readiness.add("redis", redis_ping_check(redis))
    stack.callback(readiness.clear)
    return redis


def service_app(
    service_id: str,
    setup: LifespanSetup,
    readiness: Readiness,
    *,
    body_limit: Callable[[Scope], int | None],
    expose_docs: bool = True,
) -> FastAPI:
    """The app every service starts from: lifespan from `setup`, JSON errors, body size limit, health routes.

    `readiness` is the one `setup` fills in; `expose_docs=False` drops /docs, /redoc and /openapi.json.
    """
    docs: dict[str, Any] = {} if expose_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title=f"AutoBot {service_id}", lifespan=lifespan_with_stack(setup), **docs)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, limit_for=body_limit)
    add_health_routes(app, service_id, readiness)
    return app
