"""main-backend: async chat, conversation files and context windows over HTTP.

`create_app(config)` builds the app; nothing touches Redis, SQLite or the disk until the lifespan starts:
it opens the Redis client (autobot.redis_pool), initialises the file store (schema created on first start),
the transcripts directory, the LLM provider and the chat workflow, and closes them again on shutdown.
The routes are exactly the `public` list of main-backend in inventory/group_vars/all/services.yml.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio import Redis
from starlette.types import Scope

from autobot.chat.entries import SESSION_ID_MAX_LENGTH, InvalidSessionIdError, validate_session_id
from autobot.chat.transcripts import TranscriptStorageError, TranscriptStore
from autobot.chat.workflow import ChatUnavailableError, ChatWorkflowManager, EmptyMessageError
from autobot.config import BackendConfig, ConfigError, ServiceConfig
from autobot.context import ContextTooLargeError, ContextWindowManager, ModelRegistry
from autobot.llm import LLMError, LLMUnavailableError, ProviderBuilder, make_provider
from autobot.llm.ai_stack import ai_stack_builders
from autobot.services._http import (
    ApiError,
    Readiness,
    ReadinessCheck,
    error_response,
    open_redis,
    service_app,
    sse_event,
)
from autobot.storage import (
    ConversationFileManager,
    FileDeletedError,
    FileIntegrityError,
    FileRecord,
    FileStoreError,
    FileTooLargeError,
    SchemaError,
    StorageBackendError,
    StorageNotInitializedError,
    UnknownFileError,
)

SERVICE_ID = "main-backend"
# A request-size guard, not a model limit: whether a message fits a model is decided by its context window
# (413 context_too_large). 256k characters is more than any registered model's window can take.
MAX_MESSAGE_CHARS = 256 * 1024
MAX_MODEL_NAME_CHARS = 200
MAX_FILE_ID_CHARS = 64
# JSON may escape every character as \uXXXX (6 bytes), plus room for the other fields.
JSON_BODY_LIMIT = 6 * MAX_MESSAGE_CHARS + 64 * 1024
# Multipart framing and the small form fields around an upload.
MULTIPART_OVERHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the lifespan opened; request handlers reach it through `app.state.backend`."""

    redis: Redis
    files: ConversationFileManager
    chat: ChatWorkflowManager
    windows: ContextWindowManager


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    session_id: str = Field(min_length=1, max_length=SESSION_ID_MAX_LENGTH)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_CHARS)

    @field_validator("session_id")
    @classmethod
    def _safe_session_id(cls, value: str) -> str:
        return validate_session_id(value)


def _backend_config(config: ServiceConfig) -> BackendConfig:
    if config.backend is None:
        raise ConfigError(f"service {config.service_id!r} has no 'backend' section; main-backend needs one")
    return config.backend


def load_registry(config: ServiceConfig) -> ModelRegistry:
    backend = _backend_config(config)
    return ModelRegistry.load(backend.models_file or config.models_file, default_model=backend.default_model)


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


def _upload_path(scope: Scope) -> bool:
    parts = scope.get("path", "").split("/")
    # /api/sessions/<id>/files -> ["", "api", "sessions", "<id>", "files"]
    return (
        scope.get("method") == "POST"
        and len(parts) == 5
        and parts[1:3] == ["api", "sessions"]
        and (parts[4] == "files")
    )


def _body_limit(max_upload_bytes: int) -> Callable[[Scope], int | None]:
    def limit_for(scope: Scope) -> int | None:
        if _upload_path(scope):
            return max_upload_bytes + MULTIPART_OVERHEAD
        return JSON_BODY_LIMIT

    return limit_for


def _content_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace('"', "'").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


def _install_domain_errors(app: FastAPI) -> None:
    """Map the chat, context, LLM and storage exceptions to JSON responses (one place, one table)."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return _domain_error(exc)

    for exc_type in (
        ChatUnavailableError,
        TranscriptStorageError,
        ContextTooLargeError,
        LLMError,
        InvalidSessionIdError,
        EmptyMessageError,
        FileStoreError,
        FileIntegrityError,
        StorageBackendError,
        StorageNotInitializedError,
        SchemaError,
    ):
        app.add_exception_handler(exc_type, handle)


def _domain_error(exc: Exception) -> JSONResponse:
    # Most specific classes first: FileTooLargeError and UnknownFileError are FileStoreErrors, etc.
    if isinstance(exc, ChatUnavailableError):
        saved = " Your message was saved to the session transcript." if exc.saved_ids else ""
        return error_response(
            503,
            "history_unavailable",
            f"the chat history store (Redis) is unavailable; try again shortly.{saved} ({exc})",
            saved_message_ids=list(exc.saved_ids),
        )
    if isinstance(exc, TranscriptStorageError):
        return error_response(503, "transcript_unavailable", f"the transcript store is unavailable: {exc}")
    if isinstance(exc, ContextTooLargeError):
        return error_response(
            413,
            "context_too_large",
            str(exc),
            model=exc.model.name,
            needed_tokens=exc.needed_tokens,
            available_tokens=exc.available_tokens,
            context_window_tokens=exc.model.context_window_tokens,
            max_output_tokens=exc.model.max_output_tokens,
        )
    if isinstance(exc, LLMUnavailableError):
        return error_response(503, "llm_unavailable", f"the language model is unavailable: {exc}")
    if isinstance(exc, LLMError):
        return error_response(502, "llm_error", f"the language model failed: {exc}")
    if isinstance(exc, InvalidSessionIdError):
        return error_response(422, "invalid_session_id", str(exc))
    if isinstance(exc, EmptyMessageError):
        return error_response(422, "invalid_request", str(exc))
    if isinstance(exc, FileTooLargeError):
        return error_response(413, "file_too_large", str(exc), size_bytes=exc.size, limit_bytes=exc.limit)
    if isinstance(exc, FileDeletedError):
        return error_response(410, "file_deleted", str(exc), file_id=exc.file_id)
    if isinstance(exc, UnknownFileError):
        return error_response(404, "file_not_found", str(exc), file_id=exc.file_id)
    if isinstance(exc, FileStoreError):
        return error_response(422, "invalid_file", str(exc))
    if isinstance(exc, FileIntegrityError):
        return error_response(500, "file_integrity_error", str(exc), file_id=exc.file_id)
    return error_response(503, "file_storage_unavailable", f"the file store is unavailable: {exc}")


def _dir_writable_check(path: Path) -> ReadinessCheck:
    async def check() -> None:
        ok = await asyncio.to_thread(lambda: path.is_dir() and os.access(path, os.W_OK | os.X_OK))
        if not ok:
            raise RuntimeError(f"{path} is not a writable directory")

    return check


def create_app(
    config: ServiceConfig, *, provider_builders: Mapping[str, ProviderBuilder] | None = None
) -> FastAPI:
    """The main-backend app. `provider_builders` adds LLM provider builders (the signed "ai-stack" one)."""
    backend = _backend_config(config)
    # Read (and validated) now: a broken registry file fails the start, not the first chat.
    windows = ContextWindowManager(load_registry(config))
    readiness = Readiness()

    async def setup(app: FastAPI, stack: contextlib.AsyncExitStack) -> None:
        redis = open_redis(config.redis, stack, readiness)
        files = ConversationFileManager.from_config(backend)
        await files.initialize()
        chat = ChatWorkflowManager(
            redis=redis,
            windows=windows,
            # The signed "ai-stack" provider needs the whole config (keys, peers); explicit builders win.
            provider=make_provider(
                config.llm, extra_builders={**ai_stack_builders(config), **(provider_builders or {})}
            ),
            transcripts=TranscriptStore(backend.transcripts_dir),
            history_ttl_s=backend.history_ttl_s,
        )
        stack.push_async_callback(chat.aclose)
        await chat.initialize()
        app.state.backend = BackendState(redis=redis, files=files, chat=chat, windows=windows)
        stack.callback(delattr, app.state, "backend")
        readiness.add("database", files.storage_stats)
        readiness.add("transcripts", _dir_writable_check(backend.transcripts_dir))

    # No /docs or /openapi.json: the service matrix lists every public route, and those are not among them.
    app = service_app(
        SERVICE_ID, setup, readiness, body_limit=_body_limit(backend.max_upload_bytes), expose_docs=False
    )
    _install_domain_errors(app)
    _add_chat_routes(app)
    _add_file_routes(app)
    _add_model_routes(app, windows)
    return app


def _add_chat_routes(app: FastAPI) -> None:
    @app.post("/api/chat", tags=["chat"])
    async def chat(body: ChatRequest, state: State) -> dict[str, Any]:
        result = await state.chat.chat(body.session_id, body.message, body.model)
        return result.to_dict()

    @app.post("/api/chat/stream", tags=["chat"])
    async def chat_stream(body: ChatRequest, state: State) -> StreamingResponse:
        # Persisting and windowing happen here, so their errors are ordinary JSON responses.
        stream = await state.chat.stream(body.session_id, body.message, body.model)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream.chunks():
                    yield sse_event("chunk", {"text": chunk})
            except (LLMError, ChatUnavailableError, TranscriptStorageError) as exc:
                # The response has started; the error can only travel as an event now.
                body = _domain_error(exc).body
                yield b"event: error\ndata: " + bytes(body) + b"\n\n"
                return
            assert stream.result is not None
            yield sse_event("done", stream.result.to_dict())

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.get("/api/chat/sessions/{session_id}/messages", tags=["chat"])
    async def session_messages(
        session_id: SessionId,
        state: State,
        limit: Annotated[int | None, Query(ge=1)] = None,
        before: Annotated[int | None, Query(ge=1)] = None,
        model: Annotated[str | None, Query(min_length=1, max_length=MAX_MODEL_NAME_CHARS)] = None,
    ) -> dict[str, Any]:
        view = await state.chat.messages(session_id, model=model, limit=limit, before=before)
        return view.to_dict()


async def _session_file(state: BackendState, session_id: str, file_id: str) -> FileRecord:
    """The file, if it belongs to (or is associated with) the session; 404 otherwise."""
    record = await state.files.get_file(file_id) if len(file_id) <= MAX_FILE_ID_CHARS else None
    if record is not None and record.session_id != session_id:
        associated = await state.files.list_files(session_id, include_deleted=True)
        if all(f.file_id != file_id for f in associated):
            record = None
    if record is None:
        raise UnknownFileError(file_id[:MAX_FILE_ID_CHARS], f"session {session_id!r} has no file {file_id!r}")
    return record


def _add_file_routes(app: FastAPI) -> None:
    @app.post("/api/sessions/{session_id}/files", status_code=201, tags=["files"])
    async def upload(
        session_id: SessionId,
        state: State,
        file: Annotated[UploadFile, File(description="the file's content")],
        uploaded_by: Annotated[str | None, Form(max_length=255)] = None,
        message_id: Annotated[str | None, Form(max_length=255)] = None,
    ) -> dict[str, Any]:
        limit = state.files.max_file_bytes
        if file.size is not None and file.size > limit:
            raise FileTooLargeError(file.size, limit)
        content = await file.read(limit + 1)
        if len(content) > limit:
            raise FileTooLargeError(file.size or len(content), limit)
        record = await state.files.add_file(
            session_id,
            file.filename or "",
            content,
            mime_type=file.content_type,
            uploaded_by=uploaded_by,
            message_id=message_id,
        )
        return record.to_dict()

    @app.get("/api/sessions/{session_id}/files", tags=["files"])
    async def list_files(session_id: SessionId, state: State) -> dict[str, Any]:
        records = await state.files.list_files(session_id)
        return {"session_id": session_id, "files": [r.to_dict() for r in records]}

    @app.get("/api/sessions/{session_id}/files/{file_id}", tags=["files"])
    async def download(session_id: SessionId, file_id: str, state: State) -> Response:
        record = await _session_file(state, session_id, file_id)
        content = await state.files.read_content(record.file_id)
        headers = {
            "Content-Disposition": _content_disposition(record.original_filename),
            "X-Content-Type-Options": "nosniff",
            "X-File-SHA256": record.file_hash,
        }
        media_type = record.mime_type or "application/octet-stream"
        return Response(content, media_type=media_type, headers=headers)

    @app.delete("/api/sessions/{session_id}/files/{file_id}", tags=["files"])
    async def delete(session_id: SessionId, file_id: str, state: State) -> dict[str, Any]:
        record = await _session_file(state, session_id, file_id)
        changed = await state.files.soft_delete(record.file_id)
        return {"file_id": record.file_id, "deleted": True, "already_deleted": not changed}

    @app.get("/api/sessions/{session_id}/files-summary", tags=["files"])
    async def files_summary(session_id: SessionId, state: State) -> dict[str, Any]:
        return (await state.files.session_summary(session_id)).to_dict()

    @app.get("/api/files/stats", tags=["files"])
    async def files_stats(state: State) -> dict[str, Any]:
        return (await state.files.storage_stats()).to_dict()


def _add_model_routes(app: FastAPI, windows: ContextWindowManager) -> None:
    registry = windows.registry
    models = [
        {
            "name": spec.name,
            "context_window_tokens": spec.context_window_tokens,
            "max_output_tokens": spec.max_output_tokens,
            "message_limit": spec.message_limit,
            "history_token_budget": spec.history_token_budget,
            "fetch_limit": windows.fetch_limit(spec),
        }
        for spec in registry
    ]

    @app.get("/api/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"default": registry.default_name, "models": models}
