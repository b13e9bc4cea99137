"""BodySizeLimitMiddleware: refuse oversize request bodies with 413 before they are read or spooled to disk.

Every service app has it (inside the service-auth middleware, outside the routers); the limit is a function
of the request: `post_body_limit` (one limit for POST bodies) or `route_body_limits` (a limit per route,
found by matching the request against that route the way the router will).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autobot.middleware.asgi import content_length, error_response

BodyLimit = Callable[[Scope], int | None]
"""The body limit for a request scope in bytes; None = no limit."""


class BodySizeLimitMiddleware:
    """Pure ASGI: refuse request bodies larger than `limit_for(scope)` bytes (None = no limit) with 413.

    A declared Content-Length over the limit is refused before any byte is read. Otherwise the streamed
    bytes are counted and the receive call raises an HTTPException(413) once the limit is passed, which
    FastAPI's body reading re-raises and the error handlers render. Works on any FastAPI version.
    """

    def __init__(self, app: ASGIApp, limit_for: BodyLimit) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > limit:
            response = error_response(413, "payload_too_large", _too_large(limit), limit_bytes=limit)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, counting_receive, send)


def _too_large(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes"


def post_body_limit(max_bytes: int) -> BodyLimit:
    """`max_bytes` for POST bodies, none for other methods."""

    def limit_for(scope: Scope) -> int | None:
        return max_bytes if scope["method"] == "POST" else None

    return limit_for


def route_body_limits(
    routes: Iterable[BaseRoute], limits: Mapping[str, int], default: int | None
) -> BodyLimit:
    """`limits[name]` for a request the route of that name (FastAPI's `name=`) among `routes` will serve,
    `default` for every other request.

    The route is matched as the router matches it (path template and method), so no path is parsed here a
    second time. A name in `limits` that no route has is a start-up error, not a silently unlimited route.
    """
    named = {name: route for route in routes if isinstance(name := getattr(route, "name", None), str)}
    missing = sorted(set(limits) - set(named))
    if missing:
        raise ValueError(f"body limits name routes that do not exist: {', '.join(missing)}")
    limited = [(named[name], limit) for name, limit in limits.items()]

    def limit_for(scope: Scope) -> int | None:
        for route, limit in limited:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return limit
        return default

    return limit_for
