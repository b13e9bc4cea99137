"""Health routes: GET /api/health is liveness (no I/O); GET /api/ready runs the readiness checks.

/api/health also names the key versions the process loaded at start (ids only, never keys): `signing`, the
key ids its signing clients use (the app sets `app.state.signing_key_ids`), and `verifying`, the caller key
ids the service-auth middleware accepts (null without a middleware: nothing is verified). A rotation reads
them to check, not assume, that every machine runs the versions its files hold.

The readiness checks run concurrently with a timeout, and /api/ready answers 503 `not_ready` naming what
failed. The lifespan registers them once the resources they probe exist (`Readiness.add`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from autobot.middleware.asgi import error_response
from autobot.middleware.service_auth_core import VERIFYING_KEYS_SCOPE_KEY

ReadinessCheck = Callable[[], Awaitable[object]]
"""A readiness check returns (any value) when the dependency is usable and raises when it is not."""


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


def keys_in_use(request: Request) -> dict[str, list[str] | None]:
    """The key ids this process signs with and accepts, as loaded at start (see the module docstring)."""
    verifying = request.scope.get(VERIFYING_KEYS_SCOPE_KEY)
    signing = getattr(request.app.state, "signing_key_ids", None) or []
    return {
        "signing": sorted(str(k) for k in signing),
        "verifying": None if verifying is None else [str(k) for k in verifying],
    }


def health_router(service_id: str, readiness: Readiness) -> APIRouter:
    router = APIRouter(tags=["health"])
    started = time.monotonic()

    @router.get("/api/health")
    async def health(request: Request) -> dict[str, Any]:
        # Liveness only: no I/O, so a slow dependency never gets a healthy process restarted.
        return {
            "status": "ok",
            "service": service_id,
            "uptime_s": round(time.monotonic() - started, 3),
            "keys": keys_in_use(request),
        }

    @router.get("/api/ready")
    async def ready() -> JSONResponse:
        checks = await readiness.run()
        failed = sorted(name for name, outcome in checks.items() if outcome != "ok")
        if failed:
            return error_response(
                503, "not_ready", f"{service_id} not ready: {', '.join(failed)} failed", checks=checks
            )
        return JSONResponse({"status": "ready", "service": service_id, "checks": checks})

    return router
