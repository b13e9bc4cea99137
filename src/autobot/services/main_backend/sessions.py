"""The session routes (issue 15): create a session, list the caller's own, delete one.

A session id is issued here and nowhere else; every other route that names a session accepts only an id
issued to its caller (`state.OwnedSessionId`, `chat.OwnedChatRequest`) and answers 404 for any other.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict

from autobot.services.main_backend.identity import issue_client_cookie
from autobot.services.main_backend.state import CallerId, OwnedSessionId, State

router = APIRouter(tags=["sessions"])


class CreateSessionRequest(BaseModel):
    """Nothing to choose yet: the body may be `{}` or absent. Unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


@router.post("/api/chat/sessions", status_code=201)
async def create_session(
    state: State,
    caller: CallerId,
    response: Response,
    body: Annotated[CreateSessionRequest | None, Body()] = None,
) -> dict[str, Any]:
    # The first request that needs an identity gets one. The cookie goes out only with a 201: on an error
    # FastAPI sends the error response instead of this one, so no identity is issued for nothing.
    if caller.owner is None:
        caller = issue_client_cookie(response, caller)
    assert caller.owner is not None
    info = await state.sessions.create(caller.owner)
    return {"session_id": info.session_id, "created_at": info.created_at, "title": info.title}


@router.get("/api/chat/sessions")
async def list_sessions(state: State, caller: CallerId) -> dict[str, Any]:
    if caller.owner is None:
        return {"sessions": []}
    return {"sessions": [info.to_dict() for info in await state.sessions.list_owned(caller.owner)]}


@router.delete("/api/chat/sessions/{session_id}")
async def delete_session(session_id: OwnedSessionId, state: State, caller: CallerId) -> dict[str, Any]:
    """History and transcript removed, files soft-deleted, then the session forgotten: each step can be
    repeated, so a delete that failed half way (503) is finished by sending it again."""
    assert caller.owner is not None  # OwnedSessionId passed
    await state.chat.delete_session(session_id)
    await state.files.soft_delete_session(session_id)
    await state.sessions.remove(caller.owner, session_id)
    return {"session_id": session_id, "deleted": True}
