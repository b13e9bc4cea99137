"""A small app factory behind the service-auth middlewares in tests (the `create_app(config)` contract).

It reports what reached it (method, raw path, body hash, the middleware's decision), so tests can check that
the body is replayed intact and which requests the logging phase let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from autobot.config import ServiceConfig

SCOPE_KEY = "autobot.service_auth"


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    decision = request.scope.get(SCOPE_KEY)
    return JSONResponse(
        {
            "service": request.app.state.service_id,
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query": dict(request.query_params),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_len": len(body),
            "decision": None if decision is None else [decision.status, decision.reason, decision.caller],
            "lifespan_started": request.app.state.started,
        }
    )


async def _slow(request: Request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("s", "2")))
    return JSONResponse({"slow": True})


def create_app(config: ServiceConfig) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.started = True
        yield
        app.state.started = False

    app = Starlette(
        routes=[
            Route("/api/sessions/slow", _slow, methods=["GET"]),
            Route("/{path:path}", _echo, methods=["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
        ],
        lifespan=lifespan,
    )
    app.state.service_id = config.service_id
    app.state.started = False
    return app
