"""The pieces at the services' HTTP edge, without a server: main-backend's exception table, the per-route
body limits, and the one error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI

from autobot.chat.transcripts import CorruptTranscriptError, TranscriptStorageError
from autobot.llm import LLMError, LLMUnavailableError
from autobot.llm.base import LLMResponseError
from autobot.middleware.asgi import content_length, error_body, error_response
from autobot.middleware.body_size_limit import route_body_limits
from autobot.services.main_backend import errors
from autobot.services.main_backend.errors import DOMAIN_ERRORS, domain_error
from autobot.storage import (
    EmptyFileError,
    FileDeletedError,
    MigrationSourceError,
    SchemaError,
    StorageBackendError,
    StorageError,
    UnknownFileError,
)


def _answer(exc: Exception) -> tuple[int, str, str, dict[str, Any]] | None:
    error = domain_error(exc)
    return None if error is None else (error.status_code, error.code, error.detail, error.extra)


def test_the_nearest_class_in_the_table_answers() -> None:
    # FileDeletedError is also an UnknownFileError and a FileStoreError: its own row wins.
    assert _answer(FileDeletedError("f1")) == (
        410,
        "file_deleted",
        "file 'f1' was deleted",
        {"file_id": "f1"},
    )
    assert _answer(UnknownFileError("f2")) == (
        404,
        "file_not_found",
        "no file with id 'f2'",
        {"file_id": "f2"},
    )
    # Not listed: their nearest listed base answers.
    assert _answer(EmptyFileError("no bytes")) == (422, "invalid_file", "no bytes", {})
    assert _answer(LLMResponseError("garbage")) == (
        502,
        "llm_error",
        "the language model failed: garbage",
        {},
    )
    unavailable = "the language model is unavailable: refused"
    assert _answer(LLMUnavailableError("refused")) == (503, "llm_unavailable", unavailable, {})


def test_a_subclass_of_a_storage_failure_is_a_storage_failure() -> None:
    class DiskFull(StorageBackendError):
        pass

    assert _answer(DiskFull("disk full")) == (
        503,
        "file_storage_unavailable",
        "the file store is unavailable: disk full",
        {},
    )


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("x"),
        RuntimeError("x"),
        StorageError("x"),  # the family's base: not every storage error is an outage
        MigrationSourceError("x"),  # a packaging bug: a 500, not "file store unavailable"
        CorruptTranscriptError("x"),
    ],
)
def test_what_the_table_does_not_name_is_not_a_domain_error(exc: Exception) -> None:
    # No fall-through label: these reach the generic 500 handler, which echoes nothing.
    assert _answer(exc) is None


def test_every_row_of_the_table_renders_in_the_one_error_shape() -> None:
    samples: dict[type[Exception], Exception] = {
        SchemaError: SchemaError("/db", "too new"),
        FileDeletedError: FileDeletedError("f"),
        UnknownFileError: UnknownFileError("f"),
        TranscriptStorageError: TranscriptStorageError("read-only"),
        LLMError: LLMError("refused"),
    }
    for exc_type, exc in samples.items():
        assert exc_type in DOMAIN_ERRORS
        error = domain_error(exc)
        assert error is not None
        body = json.loads(error.response().body)
        assert body == error.body()
        assert (body["error"], body["detail"]) == (error.code, error.detail)


def test_install_registers_a_handler_for_every_row() -> None:
    app = FastAPI()
    errors.install_domain_errors(app)
    assert set(DOMAIN_ERRORS) <= set(app.exception_handlers)


def test_the_error_shape_is_the_same_for_every_sender() -> None:
    assert error_body("payload_too_large", "too big", limit_bytes=10) == {
        "error": "payload_too_large",
        "detail": "too big",
        "limit_bytes": 10,
    }
    response = error_response(503, "service_unavailable", "later", headers={"retry-after": "1"})
    assert json.loads(response.body) == {"error": "service_unavailable", "detail": "later"}
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers or []}


def test_a_route_body_limit_follows_the_route_not_a_parsed_path() -> None:
    router = APIRouter()

    @router.post("/api/sessions/{session_id}/files", name="upload")
    async def upload() -> None: ...

    @router.get("/api/sessions/{session_id}/files")
    async def listing() -> None: ...

    limit_for = route_body_limits(router.routes, {"upload": 1000}, 50)
    assert limit_for(_scope("POST", "/api/sessions/s1/files")) == 1000
    assert limit_for(_scope("GET", "/api/sessions/s1/files")) == 50  # same path, another route
    assert limit_for(_scope("POST", "/api/sessions/s1/files/extra")) == 50
    assert limit_for(_scope("POST", "/api/chat")) == 50


def test_a_route_body_limit_for_a_route_that_does_not_exist_fails_at_once() -> None:
    with pytest.raises(ValueError, match="upload"):
        route_body_limits(APIRouter().routes, {"upload": 1000}, 50)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"content-length", b"12")], 12),
        ([(b"Content-Length", b"12")], 12),  # the one parser lower-cases, whatever the server did
        ([(b"content-length", b"twelve")], None),
        ([(b"content-length", b"7"), (b"content-length", b"9")], 7),
    ],
)
def test_one_content_length_parser(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert content_length(_scope("POST", "/", headers)) == expected
