"""The chat routes: a reply in one piece, a reply streamed as server-sent events, and a session's messages.

Each accepts only a session issued to its caller (404 otherwise, issue 15); a completed turn is counted in the
session registry (title, message count, activity) for the caller's session list.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autobot.chat.entries import SESSION_ID_MAX_LENGTH, validate_session_id
from autobot.chat.transcripts import TranscriptStorageError
from autobot.chat.workflow import ChatUnavailableError
from autobot.llm import LLMError
from autobot.services.http.sse import sse_event, with_heartbeat
from autobot.services.main_backend.errors import domain_error
from autobot.services.main_backend.identity import Caller
from autobot.services.main_backend.state import BackendState, CallerId, OwnedSessionId, State, require_owner
from autobot.sessions import SessionStoreUnavailableError, ids

# A request-size guard, not a model limit: whether a message fits a model is decided by its context window
# (413 context_too_large). 256k characters is more than any registered model's window can take.
MAX_MESSAGE_CHARS = 256 * 1024
MAX_MODEL_NAME_CHARS = 200

router = APIRouter(tags=["chat"])
log = logging.getLogger(__name__)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    session_id: str = Field(min_length=1, max_length=SESSION_ID_MAX_LENGTH)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_CHARS)

    @field_validator("session_id")
    @classmethod
    def _safe_session_id(cls, value: str) -> str:
        return validate_session_id(value)


async def _owned_chat_request(body: ChatRequest, state: State, caller: CallerId) -> ChatRequest:
    await require_owner(state, caller, body.session_id)
    return body


OwnedChatRequest = Annotated[ChatRequest, Depends(_owned_chat_request)]


async def _count_turn(state: BackendState, caller: Caller, body: ChatRequest) -> None:
    """Record the turn in the session list. The reply exists already: a registry outage costs the list an
    update (logged), never the user their answer."""
    assert caller.owner is not None  # the request passed require_owner
    try:
        await state.sessions.touch(caller.owner, body.session_id, message=body.message, added=2)
    except SessionStoreUnavailableError as exc:
        short = ids.short_id(body.session_id)
        log.warning("session %s: turn not counted in the session list: %s", short, exc)


@router.post("/api/chat")
async def chat(body: OwnedChatRequest, state: State, caller: CallerId) -> dict[str, Any]:
    result = await state.chat.chat(body.session_id, body.message, body.model)
    await _count_turn(state, caller, body)
    return result.to_dict()


@router.post("/api/chat/stream")
async def chat_stream(body: OwnedChatRequest, state: State, caller: CallerId) -> StreamingResponse:
    # Persisting and windowing happen here, so their errors are ordinary JSON responses.
    stream = await state.chat.stream(body.session_id, body.message, body.model)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream.chunks():
                yield sse_event("chunk", {"text": chunk})
        except (LLMError, ChatUnavailableError, TranscriptStorageError) as exc:
            # The response has started; the error can only travel as an event now, in the same shape.
            error = domain_error(exc)
            assert error is not None  # all three classes are in the table
            yield sse_event("error", error.body())
            return
        assert stream.result is not None
        await _count_turn(state, caller, body)
        yield sse_event("done", stream.result.to_dict())

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        with_heartbeat(events(), state.stream_heartbeat_s), media_type="text/event-stream", headers=headers
    )


@router.get("/api/chat/sessions/{session_id}/messages")
async def session_messages(
    session_id: OwnedSessionId,
    state: State,
    limit: Annotated[int | None, Query(ge=1)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=MAX_MODEL_NAME_CHARS)] = None,
) -> dict[str, Any]:
    view = await state.chat.messages(session_id, model=model, limit=limit, before=before)
    return view.to_dict()
