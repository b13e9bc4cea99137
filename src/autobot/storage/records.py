"""What the file store hands back: immutable records, built from database rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any


def parse_timestamp(value: str | None) -> datetime | None:
    """SQLite's CURRENT_TIMESTAMP text ("YYYY-MM-DD HH:MM:SS", always UTC) as an aware datetime."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class FileRecord:
    file_id: str
    session_id: str  # the session that uploaded it
    original_filename: str
    stored_filename: str
    file_path: str  # where the content was written (informational; content is read via files_dir)
    file_size: int
    file_hash: str  # SHA-256, lower-case hex
    mime_type: str | None
    uploaded_at: datetime  # UTC
    uploaded_by: str | None
    is_deleted: bool
    deleted_at: datetime | None
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; leaves out stored_filename and file_path, which reveal the server's disk layout."""
        return {
            "file_id": self.file_id,
            "session_id": self.session_id,
            "original_filename": self.original_filename,
            "file_size": self.file_size,
            "file_hash": self.file_hash,
            "mime_type": self.mime_type,
            "uploaded_at": _iso(self.uploaded_at),
            "uploaded_by": self.uploaded_by,
            "is_deleted": self.is_deleted,
            "deleted_at": _iso(self.deleted_at),
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class SessionSummary:
    session_id: str
    file_count: int
    total_size: int
    first_file_added: datetime | None
    last_file_added: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "file_count": self.file_count,
            "total_size": self.total_size,
            "first_file_added": _iso(self.first_file_added),
            "last_file_added": _iso(self.last_file_added),
        }


@dataclass(frozen=True, slots=True)
class StorageStats:
    total_files: int  # including soft-deleted ones (their content is still on disk)
    active_files: int
    deleted_files: int
    total_bytes: int
    active_bytes: int
    sessions: int  # sessions with at least one active file

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_files": self.total_files,
            "active_files": self.active_files,
            "deleted_files": self.deleted_files,
            "total_bytes": self.total_bytes,
            "active_bytes": self.active_bytes,
            "sessions": self.sessions,
        }


# Column order shared by the query that builds FileRecords (see files.py) and record_from_row.
FILE_COLUMNS = (
    "f.file_id, f.session_id, f.original_filename, f.stored_filename, f.file_path, f.file_size, "
    "f.file_hash, f.mime_type, f.uploaded_at, f.uploaded_by, f.is_deleted, f.deleted_at, "
    "(SELECT json_group_object(m.metadata_key, m.metadata_value) FROM file_metadata AS m "
    "WHERE m.file_id = f.file_id AND m.metadata_value IS NOT NULL) AS metadata"
)


def record_from_row(row: tuple[Any, ...]) -> FileRecord:
    (
        file_id,
        session_id,
        original,
        stored,
        file_path,
        size,
        digest,
        mime,
        uploaded_at,
        uploaded_by,
        is_deleted,
        deleted_at,
        metadata_json,
    ) = row
    uploaded = parse_timestamp(uploaded_at)
    if uploaded is None:  # the column has a default; NULL only if someone wrote it explicitly
        uploaded = datetime.fromtimestamp(0, UTC)
    metadata: dict[str, str] = json.loads(metadata_json) if metadata_json else {}
    return FileRecord(
        file_id=file_id,
        session_id=session_id,
        original_filename=original,
        stored_filename=stored,
        file_path=file_path,
        file_size=int(size),
        file_hash=digest,
        mime_type=mime,
        uploaded_at=uploaded,
        uploaded_by=uploaded_by,
        is_deleted=bool(is_deleted),
        deleted_at=parse_timestamp(deleted_at),
        metadata=MappingProxyType(metadata),
    )


def summary_from_row(session_id: str, row: tuple[Any, ...] | None) -> SessionSummary:
    if row is None:
        return SessionSummary(session_id, 0, 0, None, None)
    file_count, total_size, first, last = row
    return SessionSummary(
        session_id=session_id,
        file_count=int(file_count),
        total_size=int(total_size or 0),
        first_file_added=parse_timestamp(first),
        last_file_added=parse_timestamp(last),
    )
