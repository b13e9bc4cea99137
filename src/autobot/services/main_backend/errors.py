"""The chat, context, LLM and storage exceptions as JSON errors: one table, looked up along the class's MRO.

A class not in the table (nor any of its bases) is not a domain error: it reaches the generic 500 handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autobot.chat.entries import InvalidSessionIdError
from autobot.chat.transcripts import TranscriptStorageError
from autobot.chat.workflow import ChatBusyError, ChatUnavailableError, EmptyMessageError
from autobot.context import ContextTooLargeError, UnknownModelError
from autobot.llm import LLMError, LLMUnavailableError
from autobot.services.http.errors import ApiError
from autobot.services.main_backend.identity import InvalidIdentityError
from autobot.sessions import SessionNotFoundError, SessionStoreUnavailableError
from autobot.storage import (
    FileDeletedError,
    FileIntegrityError,
    FileStoreError,
    FileTooLargeError,
    SchemaError,
    StorageBackendError,
    StorageNotInitializedError,
    UnknownFileError,
)


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """How one exception class is answered: status, code, and (from the exception) detail, extra fields and
    response headers."""

    status: int
    code: str
    detail: Callable[[Any], str] = str
    fields: Callable[[Any], dict[str, Any]] = field(default=lambda _: {})
    headers: Callable[[Any], dict[str, str]] = field(default=lambda _: {})


def _history_unavailable(exc: ChatUnavailableError) -> str:
    saved = " Your message was saved to the session transcript." if exc.saved_ids else ""
    return f"the chat history store (Redis) is unavailable; try again shortly.{saved} ({exc})"


def _busy(exc: ChatBusyError) -> str:
    saved = " Your message was saved to the session transcript." if exc.saved_ids else " Nothing was stored."
    return f"main-backend is busy; retry in {exc.retry_after_s} s.{saved} ({exc})"


def _context_numbers(exc: ContextTooLargeError) -> dict[str, Any]:
    return {
        "model": exc.model.name,
        "needed_tokens": exc.needed_tokens,
        "available_tokens": exc.available_tokens,
        "context_window_tokens": exc.model.context_window_tokens,
        "max_output_tokens": exc.model.max_output_tokens,
    }


def _file_id(exc: UnknownFileError | FileIntegrityError) -> dict[str, Any]:
    return {"file_id": exc.file_id}


def _file_store_unavailable(exc: Exception) -> str:
    return f"the file store is unavailable: {exc}"


_FILE_STORE_UNAVAILABLE = ErrorRow(503, "file_storage_unavailable", _file_store_unavailable)

DOMAIN_ERRORS: Mapping[type[Exception], ErrorRow] = {
    # Busy is not down: the client is told when to retry, and a busy refusal stored nothing.
    ChatBusyError: ErrorRow(
        503,
        "busy",
        _busy,
        lambda e: {"saved_message_ids": list(e.saved_ids)},
        lambda e: {"Retry-After": str(e.retry_after_s)},
    ),
    # One answer for "never issued" and "issued to someone else": a 403 would confirm the id exists.
    SessionNotFoundError: ErrorRow(404, "session_not_found", lambda _: "no such session"),
    SessionStoreUnavailableError: ErrorRow(
        503, "sessions_unavailable", lambda e: f"the session registry is unavailable; try again shortly ({e})"
    ),
    InvalidIdentityError: ErrorRow(400, "invalid_identity"),
    ChatUnavailableError: ErrorRow(
        503, "history_unavailable", _history_unavailable, lambda e: {"saved_message_ids": list(e.saved_ids)}
    ),
    TranscriptStorageError: ErrorRow(
        503, "transcript_unavailable", lambda e: f"the transcript store is unavailable: {e}"
    ),
    ContextTooLargeError: ErrorRow(413, "context_too_large", fields=_context_numbers),
    UnknownModelError: ErrorRow(422, "unknown_model", fields=lambda e: {"known_models": list(e.known)}),
    LLMUnavailableError: ErrorRow(
        503, "llm_unavailable", lambda e: f"the language model is unavailable: {e}"
    ),
    LLMError: ErrorRow(502, "llm_error", lambda e: f"the language model failed: {e}"),
    InvalidSessionIdError: ErrorRow(422, "invalid_session_id"),
    EmptyMessageError: ErrorRow(422, "invalid_request"),
    FileTooLargeError: ErrorRow(
        413, "file_too_large", fields=lambda e: {"size_bytes": e.size, "limit_bytes": e.limit}
    ),
    FileDeletedError: ErrorRow(410, "file_deleted", fields=_file_id),
    UnknownFileError: ErrorRow(404, "file_not_found", fields=_file_id),
    FileStoreError: ErrorRow(422, "invalid_file"),
    FileIntegrityError: ErrorRow(500, "file_integrity_error", fields=_file_id),
    StorageBackendError: _FILE_STORE_UNAVAILABLE,
    StorageNotInitializedError: _FILE_STORE_UNAVAILABLE,
    SchemaError: _FILE_STORE_UNAVAILABLE,
}


def _row(exc: BaseException) -> ErrorRow | None:
    for cls in type(exc).__mro__:
        row = DOMAIN_ERRORS.get(cls)
        if row is not None:
            return row
    return None


def domain_error(exc: BaseException) -> ApiError | None:
    """The error the client sees for `exc`: the row of its nearest class in the table, or None."""
    row = _row(exc)
    return None if row is None else ApiError(row.status, row.code, row.detail(exc), **row.fields(exc))


async def _handle(_: Request, exc: Exception) -> JSONResponse:
    row = _row(exc)
    assert row is not None  # registered only for the classes of the table
    response = ApiError(row.status, row.code, row.detail(exc), **row.fields(exc)).response()
    response.headers.update(row.headers(exc))
    return response


def install_domain_errors(app: FastAPI) -> None:
    for exc_type in DOMAIN_ERRORS:
        app.add_exception_handler(exc_type, _handle)
