"""What the lifespan opened, and the route dependencies that reach it: the caller's identity, and a path's
session id checked for shape and for ownership."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from autobot.chat.entries import InvalidSessionIdError, validate_session_id
from autobot.chat.workflow import ChatWorkflowManager
from autobot.context import ContextWindowManager
from autobot.services.http.errors import ApiError
from autobot.services.main_backend.identity import (
    COOKIE_NAME,
    FORWARDED_PROTO,
    Caller,
    IdentityPolicy,
    identify,
)
from autobot.sessions import SessionNotFoundError, SessionRegistry, ids
from autobot.storage import ConversationFileManager

SERVICE_ID = "main-backend"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the lifespan opened; request handlers reach it through `app.state.backend`."""

    redis: Redis
    files: ConversationFileManager
    chat: ChatWorkflowManager
    windows: ContextWindowManager
    sessions: SessionRegistry
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)
    stream_heartbeat_s: float = 15.0


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


async def _caller(request: Request, state: State) -> Caller:
    policy = state.identity
    client = request.scope.get("client")
    wanted = policy.header.encode("latin-1") if policy.header else None
    return identify(
        policy,
        peer=client[0] if client else None,
        scheme=request.scope.get("scheme", "http"),
        # Raw bytes, every occurrence: a user name is hashed as the login sent it, and two values are refused.
        header_values=[v for n, v in request.scope["headers"] if n == wanted] if wanted else [],
        forwarded_proto=request.headers.get(FORWARDED_PROTO),
        cookie=request.cookies.get(COOKIE_NAME),
    )


CallerId = Annotated[Caller, Depends(_caller)]


async def require_owner(state: BackendState, caller: Caller, session_id: str) -> None:
    """Pass if main-backend issued `session_id` to this caller; else SessionNotFoundError (404), the same
    answer for an id that was never issued and one issued to someone else, logged without the id in full."""
    owner = await state.sessions.owner_of(session_id) if caller.owner is not None else None
    if owner is not None and owner == caller.owner:
        return
    if owner is None:
        log.info("session %s: not issued, refused (%s caller)", ids.short_id(session_id), caller.kind)
    else:
        short = ids.short_id(session_id)
        log.warning("session %s: issued to another identity, refused (%s caller)", short, caller.kind)
    raise SessionNotFoundError(session_id)


async def _owned_session(session_id: SessionId, state: State, caller: CallerId) -> str:
    await require_owner(state, caller, session_id)
    return session_id


OwnedSessionId = Annotated[str, Depends(_owned_session)]
