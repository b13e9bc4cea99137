"""The conversation-file routes: upload, list, download, delete, a session's summary, the store's stats.

A session's routes accept only a session issued to the caller (404 otherwise, issue 15).
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile

from autobot.services.main_backend.state import BackendState, OwnedSessionId, State
from autobot.storage import FileRecord, FileTooLargeError, UnknownFileError

MAX_FILE_ID_CHARS = 64
# The route name of the upload, the one route whose body limit is the upload limit (see app.py).
UPLOAD_ROUTE = "upload_file"

router = APIRouter(tags=["files"])


def _content_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace('"', "'").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


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


@router.post("/api/sessions/{session_id}/files", status_code=201, name=UPLOAD_ROUTE)
async def upload(
    session_id: OwnedSessionId,
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


@router.get("/api/sessions/{session_id}/files")
async def list_files(session_id: OwnedSessionId, state: State) -> dict[str, Any]:
    records = await state.files.list_files(session_id)
    return {"session_id": session_id, "files": [r.to_dict() for r in records]}


@router.get("/api/sessions/{session_id}/files/{file_id}")
async def download(session_id: OwnedSessionId, file_id: str, state: State) -> Response:
    record = await _session_file(state, session_id, file_id)
    content = await state.files.read_content(record.file_id)
    headers = {
        "Content-Disposition": _content_disposition(record.original_filename),
        "X-Content-Type-Options": "nosniff",
        "X-File-SHA256": record.file_hash,
    }
    media_type = record.mime_type or "application/octet-stream"
    return Response(content, media_type=media_type, headers=headers)


@router.delete("/api/sessions/{session_id}/files/{file_id}")
async def delete(session_id: OwnedSessionId, file_id: str, state: State) -> dict[str, Any]:
    record = await _session_file(state, session_id, file_id)
    changed = await state.files.soft_delete(record.file_id)
    return {"file_id": record.file_id, "deleted": True, "already_deleted": not changed}


@router.get("/api/sessions/{session_id}/files-summary")
async def files_summary(session_id: OwnedSessionId, state: State) -> dict[str, Any]:
    return (await state.files.session_summary(session_id)).to_dict()


@router.get("/api/files/stats")
async def files_stats(state: State) -> dict[str, Any]:
    return (await state.files.storage_stats()).to_dict()
