"""User routes reaching the other services: text processing (npu-worker), browser sessions (browser-service).

Every call leaves main-backend through ServiceClient, signed with main-backend's pair key for the callee, and
the callee's middleware verifies it and checks the matrix like any other service call. main-backend adds no
semantics of its own: the callee validates the request and its answer (status and JSON) is passed back, except
that a refusal between the services (401/403: keys or matrix) is main-backend's fault, never the user's (502),
and an unreachable callee is 503.

  POST   /api/tools/process                     -> npu-worker  POST   /api/process
  POST   /api/tools/browser-sessions            -> browser-service POST   /api/sessions
  GET    /api/tools/browser-sessions/{id}       -> browser-service GET    /api/sessions/{id}
  DELETE /api/tools/browser-sessions/{id}       -> browser-service DELETE /api/sessions/{id}
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from autobot.client.service_client import ServiceCallError, ServiceClient
from autobot.services.http.errors import ApiError

NPU_WORKER = "npu-worker"
BROWSER_SERVICE = "browser-service"
# What the callee answered with, when it is not JSON: a bounded, printable prefix.
_MAX_DETAIL = 300
_ID = re.compile(r"^[0-9a-f]{32}$")

router = APIRouter(tags=["tools"])


async def _client(request: Request) -> ServiceClient:
    client = getattr(request.app.state, "tools", None)
    if not isinstance(client, ServiceClient):
        raise ApiError(503, "starting", "main-backend is not ready yet")
    return client


Client = Annotated[ServiceClient, Depends(_client)]
BrowserSessionId = Annotated[
    str, Path(pattern=_ID.pattern, description="a browser session id (32 hex digits)")
]


def relay(target: str, status: int, content: bytes) -> Response:
    """The callee's answer for the user: its JSON and status, or a clear error when the services disagree."""
    if status in (401, 403):
        raise ApiError(
            502,
            "service_refused",
            f"{target} refused main-backend's call (HTTP {status}): check the service keys and the matrix",
        )
    if status == 204:
        return Response(status_code=204)
    try:
        body: Any = json.loads(content)
    except ValueError:
        text = content[:_MAX_DETAIL].decode("utf-8", "replace")
        raise ApiError(
            502, "bad_gateway", f"{target} answered HTTP {status} without JSON: {text!r}"
        ) from None
    return JSONResponse(body, status_code=status)


async def _call(client: ServiceClient, target: str, method: str, path: str, body: Any = None) -> Response:
    try:
        response = await client.request(target, method, path, json=body)
    except ServiceCallError as exc:
        raise ApiError(503, "service_unavailable", f"{target} is unavailable: {exc}") from exc
    return relay(target, response.status_code, response.content)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from None


@router.post("/api/tools/process")
async def process(request: Request, client: Client) -> Response:
    """Feature extraction on npu-worker (`{"task": "embed"|"digest", "texts": [...], "dimensions": n}`)."""
    return await _call(client, NPU_WORKER, "POST", "/api/process", await _json_body(request))


@router.post("/api/tools/browser-sessions")
async def create_browser_session(request: Request, client: Client) -> Response:
    """A browser session on browser-service (`{"url": ..., "ttl_s": n}`)."""
    return await _call(client, BROWSER_SERVICE, "POST", "/api/sessions", await _json_body(request))


@router.get("/api/tools/browser-sessions/{session_id}")
async def get_browser_session(session_id: BrowserSessionId, client: Client) -> Response:
    return await _call(client, BROWSER_SERVICE, "GET", f"/api/sessions/{session_id}")


@router.delete("/api/tools/browser-sessions/{session_id}")
async def delete_browser_session(session_id: BrowserSessionId, client: Client) -> Response:
    return await _call(client, BROWSER_SERVICE, "DELETE", f"/api/sessions/{session_id}")
