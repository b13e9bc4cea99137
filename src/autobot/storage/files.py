"""ConversationFileManager: files uploaded into chat sessions, their metadata and their audit trail.

Async facade over blocking work: every SQLite call and every file read/write runs in a worker thread
(``asyncio.to_thread``) on a connection opened for that one operation, so the event loop never waits on
disk and no connection is shared between threads. The schema is applied by ``await initialize()``, never by
the constructor (AutoBot's first version touched the database in ``__init__``).

Writes keep disk and database consistent: content is written atomically *before* its row is inserted, and
removed again if the insert fails, so a row never points at a missing file and a failed upload leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from autobot.atomic_file import write_atomic
from autobot.storage import blobs
from autobot.storage.connection import DEFAULT_BUSY_TIMEOUT_S, connect
from autobot.storage.errors import (
    FileDeletedError,
    FileIntegrityError,
    StorageBackendError,
    StorageError,
    StorageNotInitializedError,
    UnknownFileError,
)
from autobot.storage.migrate import MigrationResult, migrate
from autobot.storage.records import (
    FILE_COLUMNS,
    FileRecord,
    SessionSummary,
    StorageStats,
    record_from_row,
    summary_from_row,
)
from autobot.storage.validation import (
    safe_extension,
    validate_content,
    validate_filename,
    validate_identifier,
    validate_metadata,
    validate_optional_identifier,
)

if TYPE_CHECKING:
    from autobot.config import BackendConfig

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024


class ConversationFileManager:
    def __init__(
        self,
        db_path: Path | str,
        files_dir: Path | str,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        migrations_dir: Path | Traversable | None = None,
    ) -> None:
        if max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be at least 1, not {max_file_bytes}")
        self.db_path = Path(db_path)
        self.files_dir = Path(files_dir)
        self.max_file_bytes = max_file_bytes
        self._busy_timeout_s = busy_timeout_s
        self._migrations_dir = migrations_dir
        self._initialized = False
        self._init_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config: BackendConfig) -> ConversationFileManager:
        """Built from main-backend's config section: database path, files directory and upload limit."""
        return cls(config.database, config.files_dir, max_file_bytes=config.max_upload_bytes)

    async def initialize(self) -> MigrationResult:
        """Create the files directory and bring the database to the latest schema. Idempotent.

        Raises SchemaError / MigrationSourceError (see autobot.storage.migrate) if the database is unusable.
        """
        async with self._init_lock:
            result = await asyncio.to_thread(self._initialize_sync)
            self._initialized = True
            return result

    async def add_file(
        self,
        session_id: str,
        filename: str,
        content: bytes,
        mime_type: str | None = None,
        uploaded_by: str | None = None,
        metadata: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> FileRecord:
        """Store ``content`` for ``session_id`` and record it (with an 'upload' association).

        Raises EmptyFileError, FileTooLargeError, InvalidFilenameError or InvalidArgumentError for bad input
        (all ValueError), StorageBackendError if disk or database fail (then nothing is kept).
        """
        self._require_initialized()
        validate_identifier(session_id, "session_id")
        validate_filename(filename)
        validate_content(content, self.max_file_bytes)
        validate_optional_identifier(mime_type, "mime_type")
        validate_optional_identifier(uploaded_by, "uploaded_by")
        validate_optional_identifier(message_id, "message_id")
        checked_metadata = validate_metadata(metadata)
        return await self._run(
            self._add_file_sync,
            session_id,
            filename,
            content,
            mime_type,
            uploaded_by,
            checked_metadata,
            message_id,
        )

    async def list_files(self, session_id: str, include_deleted: bool = False) -> list[FileRecord]:
        """Files uploaded by or associated with the session, oldest first."""
        self._require_initialized()
        validate_identifier(session_id, "session_id")
        return await self._run(self._list_files_sync, session_id, include_deleted)

    async def get_file(self, file_id: str) -> FileRecord | None:
        """The file's record, soft-deleted ones included (check ``is_deleted``); None if the id is unknown."""
        self._require_initialized()
        return await self._run(self._get_file_sync, file_id)

    async def read_content(self, file_id: str, accessed_by: str | None = None) -> bytes:
        """The file's bytes, checked against the stored SHA-256; logs a 'download' access.

        Raises UnknownFileError, FileDeletedError (a subclass) or FileIntegrityError.
        """
        self._require_initialized()
        validate_optional_identifier(accessed_by, "accessed_by")
        return await self._run(self._read_content_sync, file_id, accessed_by)

    async def soft_delete(self, file_id: str, deleted_by: str | None = None) -> bool:
        """Mark the file deleted (the trigger stamps deleted_at) and log a 'delete' access.

        True if this call deleted it, False if it already was. Raises UnknownFileError for an unknown id.
        Content stays on disk for the cleanup queue.
        """
        self._require_initialized()
        validate_optional_identifier(deleted_by, "deleted_by")
        return await self._run(self._soft_delete_sync, file_id, deleted_by)

    async def soft_delete_session(self, session_id: str, deleted_by: str | None = None) -> int:
        """Soft-delete every active file the session uploaded, in one transaction; returns how many.

        Files only associated with the session (uploaded by another) are left alone: they are not its own.
        """
        self._require_initialized()
        validate_identifier(session_id, "session_id")
        validate_optional_identifier(deleted_by, "deleted_by")
        return await self._run(self._soft_delete_session_sync, session_id, deleted_by)

    async def session_ids(self) -> list[str]:
        """Every session id any file row names (deleted files included), sorted."""
        self._require_initialized()
        return await self._run(self._session_ids_sync)

    async def session_summary(self, session_id: str) -> SessionSummary:
        """Active files of the session: count, total size, first and last added (zeros if none)."""
        self._require_initialized()
        validate_identifier(session_id, "session_id")
        return await self._run(self._session_summary_sync, session_id)

    async def storage_stats(self) -> StorageStats:
        self._require_initialized()
        return await self._run(self._storage_stats_sync)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _require_initialized(self) -> None:
        if not self._initialized:
            raise StorageNotInitializedError("call 'await ConversationFileManager.initialize()' before use")

    async def _run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(func, *args, **kwargs)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = connect(self.db_path, busy_timeout_s=self._busy_timeout_s)
        except sqlite3.Error as exc:
            raise StorageBackendError(f"cannot open {self.db_path}: {exc}") from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise StorageBackendError(f"database {self.db_path}: {exc}") from exc
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE: take the write lock up front, so a read-then-write never fails half-way with SQLITE_BUSY.
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # some errors (disk full) already rolled back on their own
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _initialize_sync(self) -> MigrationResult:
        try:
            blobs.ensure_dir(self.files_dir)
        except OSError as exc:
            raise StorageBackendError(f"cannot create files directory {self.files_dir}: {exc}") from exc
        return migrate(self.db_path, migrations_dir=self._migrations_dir)

    def _add_file_sync(
        self,
        session_id: str,
        filename: str,
        content: bytes,
        mime_type: str | None,
        uploaded_by: str | None,
        metadata: dict[str, str],
        message_id: str | None,
    ) -> FileRecord:
        file_uuid = uuid.uuid4()
        file_id = str(file_uuid)
        stored_filename = file_uuid.hex + safe_extension(filename)
        target = self.files_dir / stored_filename
        digest = hashlib.sha256(content).hexdigest()
        try:
            write_atomic(target, content, blobs.FILE_MODE)
        except OSError as exc:
            raise StorageBackendError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO conversation_files (file_id, session_id, original_filename, stored_filename,"
                    " file_path, file_size, file_hash, mime_type, uploaded_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        file_id,
                        session_id,
                        filename,
                        stored_filename,
                        str(target.absolute()),
                        len(content),
                        digest,
                        mime_type,
                        uploaded_by,
                    ),
                )
                conn.executemany(
                    "INSERT INTO file_metadata (file_id, metadata_key, metadata_value) VALUES (?, ?, ?)",
                    [(file_id, key, value) for key, value in metadata.items()],
                )
                conn.execute(
                    "INSERT INTO session_file_associations"
                    " (session_id, file_id, association_type, message_id) VALUES (?, ?, 'upload', ?)",
                    (session_id, file_id, message_id),
                )
                record = self._fetch_record(conn, file_id)
        except BaseException:
            blobs.remove_quietly(target)
            raise
        if record is None:  # the row was inserted in this very transaction
            raise StorageError(f"file {file_id} vanished right after it was inserted")
        return record

    def _fetch_record(self, conn: sqlite3.Connection, file_id: str) -> FileRecord | None:
        query = f"SELECT {FILE_COLUMNS} FROM conversation_files AS f WHERE f.file_id = ?"  # noqa: S608 (constant)
        found = conn.execute(query, (file_id,)).fetchone()
        return record_from_row(found) if found is not None else None

    def _get_file_sync(self, file_id: str) -> FileRecord | None:
        if not isinstance(file_id, str):
            return None
        with self._connection() as conn:
            return self._fetch_record(conn, file_id)

    def _list_files_sync(self, session_id: str, include_deleted: bool) -> list[FileRecord]:
        # Only module constants are interpolated; every value is a bound parameter.
        query = (
            f"SELECT {FILE_COLUMNS} FROM conversation_files AS f"  # noqa: S608
            " WHERE (f.session_id = ? OR f.file_id IN"
            " (SELECT a.file_id FROM session_file_associations AS a WHERE a.session_id = ?))"
        )
        if not include_deleted:
            query += " AND f.is_deleted = 0"
        query += " ORDER BY f.rowid"  # insertion order: uploaded_at has only one-second resolution
        with self._connection() as conn:
            return [record_from_row(row) for row in conn.execute(query, (session_id, session_id))]

    def _read_content_sync(self, file_id: str, accessed_by: str | None) -> bytes:
        record = self._get_file_sync(file_id)
        if record is None:
            raise UnknownFileError(str(file_id))
        if record.is_deleted:
            raise FileDeletedError(file_id)
        target = self.files_dir / record.stored_filename
        try:
            data = target.read_bytes()
        except FileNotFoundError as exc:
            raise FileIntegrityError(file_id, f"content file {target} is missing") from exc
        except OSError as exc:
            raise StorageBackendError(f"cannot read {target}: {exc.strerror or exc}") from exc
        if hashlib.sha256(data).hexdigest() != record.file_hash:
            raise FileIntegrityError(file_id, f"content of {target} does not match its recorded SHA-256")
        with self._transaction() as conn:
            self._log_access(conn, file_id, "download", accessed_by, {"file_size": len(data)})
        return data

    def _soft_delete_sync(self, file_id: str, deleted_by: str | None) -> bool:
        if not isinstance(file_id, str):
            raise UnknownFileError(repr(file_id))
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE conversation_files SET is_deleted = 1 WHERE file_id = ? AND is_deleted = 0",
                (file_id,),
            ).rowcount
            if changed == 0:
                exists = conn.execute("SELECT 1 FROM conversation_files WHERE file_id = ?", (file_id,))
                if exists.fetchone() is None:
                    raise UnknownFileError(file_id)
                return False
            self._log_access(conn, file_id, "delete", deleted_by, None)
        return True

    def _soft_delete_session_sync(self, session_id: str, deleted_by: str | None) -> int:
        with self._transaction() as conn:
            file_ids = [
                row[0]
                for row in conn.execute(
                    "SELECT file_id FROM conversation_files WHERE session_id = ? AND is_deleted = 0",
                    (session_id,),
                )
            ]
            conn.executemany(
                "UPDATE conversation_files SET is_deleted = 1 WHERE file_id = ?", [(f,) for f in file_ids]
            )
            for file_id in file_ids:
                self._log_access(conn, file_id, "delete", deleted_by, {"reason": "session deleted"})
        return len(file_ids)

    def _session_ids_sync(self) -> list[str]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT session_id FROM conversation_files UNION"
                " SELECT session_id FROM session_file_associations ORDER BY 1"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def _session_summary_sync(self, session_id: str) -> SessionSummary:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT file_count, total_size, first_file_added, last_file_added"
                " FROM v_session_file_summary WHERE session_id = ?",
                (session_id,),
            ).fetchone()
        return summary_from_row(session_id, row)

    def _storage_stats_sync(self) -> StorageStats:
        with self._connection() as conn:
            total, active, total_bytes, active_bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(is_deleted = 0), 0), COALESCE(SUM(file_size), 0),"
                " COALESCE(SUM(CASE WHEN is_deleted = 0 THEN file_size END), 0) FROM conversation_files"
            ).fetchone()
            (sessions,) = conn.execute("SELECT COUNT(*) FROM v_session_file_summary").fetchone()
        return StorageStats(
            total_files=int(total),
            active_files=int(active),
            deleted_files=int(total) - int(active),
            total_bytes=int(total_bytes),
            active_bytes=int(active_bytes),
            sessions=int(sessions),
        )

    @staticmethod
    def _log_access(
        conn: sqlite3.Connection,
        file_id: str,
        access_type: str,
        accessed_by: str | None,
        details: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            "INSERT INTO file_access_log (file_id, access_type, accessed_by, access_metadata)"
            " VALUES (?, ?, ?, ?)",
            (file_id, access_type, accessed_by, json.dumps(details) if details is not None else None),
        )
