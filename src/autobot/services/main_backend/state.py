"""What the lifespan opened, and the route dependencies that reach it (and check a path's session id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from autobot.chat.entries import InvalidSessionIdError, validate_session_id
from autobot.chat.workflow import ChatWorkflowManager
from autobot.context import ContextWindowManager
from autobot.services.http.errors import ApiError
from autobot.storage import ConversationFileManager

SERVICE_ID = "main-backend"


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the lifespan opened; request handlers reach it through `app.state.backend`."""

    redis: Redis
    files: ConversationFileManager
    chat: ChatWorkflowManager
    windows: ContextWindowManager


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool, which
# would cost two thread hops per request for a dictionary lookup.
async def _state(request: Request) -> BackendState:
    state = getattr(request.app.state, "backend", None)
    if not isinstance(state, BackendState):
        raise ApiError(503, "starting", f"{SERVICE_ID} is not ready yet")
    return state


async def _session(session_id: str) -> str:
    try:
        return validate_session_id(session_id)
    except InvalidSessionIdError as exc:
        raise ApiError(422, "invalid_session_id", str(exc)) from exc


State = Annotated[BackendState, Depends(_state)]
SessionId = Annotated[str, Depends(_session)]
