"""Conversation-files storage (plan fix 1): schema migrations and the ConversationFileManager.

Modules: ``migrations/`` (the SQL files), ``loader`` (reads and splits them), ``probe`` (read-only checks of a
database file), ``migrate`` (the runner), ``connection`` (how connections are opened), ``files`` (the
manager), ``records`` / ``validation`` / ``blobs`` (its data types, input checks and disk writes), ``errors``.
"""

from autobot.storage.errors import (
    EmptyFileError,
    FileDeletedError,
    FileIntegrityError,
    FileStoreError,
    FileTooLargeError,
    InvalidArgumentError,
    InvalidFilenameError,
    MigrationSourceError,
    SchemaError,
    StorageBackendError,
    StorageError,
    StorageNotInitializedError,
    UnknownFileError,
)
from autobot.storage.files import ConversationFileManager
from autobot.storage.migrate import MigrationResult, migrate
from autobot.storage.probe import read_version
from autobot.storage.records import FileRecord, SessionSummary, StorageStats

__all__ = [
    "ConversationFileManager",
    "EmptyFileError",
    "FileDeletedError",
    "FileIntegrityError",
    "FileRecord",
    "FileStoreError",
    "FileTooLargeError",
    "InvalidArgumentError",
    "InvalidFilenameError",
    "MigrationResult",
    "MigrationSourceError",
    "SchemaError",
    "SessionSummary",
    "StorageBackendError",
    "StorageError",
    "StorageNotInitializedError",
    "StorageStats",
    "UnknownFileError",
    "migrate",
    "read_version",
]
