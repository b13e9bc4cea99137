"""Every exception the storage package raises, in one place so callers can map them to responses.

Two families: ``SchemaError`` (the database file cannot be brought to the schema: an operator problem, never
retried) and the ``FileStoreError`` family (a request was wrong or names a file that does not exist). Input
errors are also ``ValueError`` so generic handlers still classify them as bad input.
"""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base class of everything the storage package raises on purpose."""


class SchemaError(StorageError):
    """The database at ``path`` is not usable: not a database, newer than this code, or a migration failed."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


class MigrationSourceError(StorageError):
    """The migration files shipped with the code are missing or malformed (a packaging bug)."""


class StorageBackendError(StorageError):
    """The database or the files directory failed (locked past the busy timeout, disk full, I/O error)."""


class StorageNotInitializedError(StorageError, RuntimeError):
    """A ConversationFileManager was used before ``await manager.initialize()``."""


class FileStoreError(StorageError, ValueError):
    """A request to the file store was invalid."""


class EmptyFileError(FileStoreError):
    """The uploaded content has no bytes."""


class FileTooLargeError(FileStoreError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"file has {size} bytes; the limit is {limit} bytes")


class InvalidFilenameError(FileStoreError):
    """The original filename is empty, too long, or holds a path separator, NUL or control character."""


class InvalidArgumentError(FileStoreError):
    """Another argument (session id, metadata, message id) is malformed."""


class UnknownFileError(FileStoreError):
    def __init__(self, file_id: str, message: str | None = None) -> None:
        self.file_id = file_id
        super().__init__(message or f"no file with id {file_id!r}")


class FileDeletedError(UnknownFileError):
    """The file exists but was soft-deleted; its content is no longer served."""

    def __init__(self, file_id: str) -> None:
        super().__init__(file_id, f"file {file_id!r} was deleted")


class FileIntegrityError(StorageError):
    """The stored content is missing or does not match its recorded SHA-256 (a server-side fault)."""

    def __init__(self, file_id: str, message: str) -> None:
        self.file_id = file_id
        super().__init__(f"file {file_id!r}: {message}")
