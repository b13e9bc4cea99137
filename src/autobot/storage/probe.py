"""Look at a database file without changing a byte of it.

Used before the migration runner opens a file for writing (so a corrupt or too-new file is refused while
still untouched) and by ``autobot db version``, which must never write.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from autobot.storage.errors import SchemaError

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
# SQLite result codes that mean "this is not (or no longer) a database", as opposed to busy/locked/readonly.
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


@dataclass(frozen=True, slots=True)
class FileHeader:
    user_version: int
    wal: bool  # file format 2 = WAL mode; then the header's user_version may lag behind the -wal file


def parse_header(header: bytes) -> FileHeader | None:
    """Decode the 100-byte database header; None if it is not one SQLite would accept."""
    if len(header) < HEADER_SIZE or not header.startswith(SQLITE_MAGIC):
        return None
    page_size = int.from_bytes(header[16:18], "big")
    if page_size != 1 and (page_size < 512 or page_size > 32768 or page_size & (page_size - 1)):
        return None
    write_format, read_format = header[18], header[19]
    if write_format not in (1, 2) or read_format not in (1, 2):
        return None
    user_version = int.from_bytes(header[60:64], "big", signed=True)
    return FileHeader(user_version=user_version, wal=read_format == 2)


def read_header(path: Path) -> FileHeader | None:
    """The header of an existing database; None for a missing or empty file (SQLite treats both as new).

    Raises SchemaError if the file exists but is not an SQLite database.
    """
    try:
        with path.open("rb") as handle:
            header = handle.read(HEADER_SIZE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SchemaError(path, f"cannot read database file: {exc.strerror or exc}") from exc
    if not header:
        return None
    parsed = parse_header(header)
    if parsed is None:
        raise SchemaError(path, "not an SQLite database (bad file header); the file was left untouched")
    return parsed


def check_known_version(path: Path, version: int, latest: int) -> None:
    if version < 0 or version > latest:
        raise SchemaError(
            path,
            f"database schema version {version} is newer than this code knows (latest {latest}); "
            "upgrade autobot instead of downgrading the database. The file was left untouched",
        )


def read_version(path: Path | str) -> int:
    """The schema version (PRAGMA user_version) of a database; 0 for a missing or empty file. Read-only."""
    path = Path(path)
    header = read_header(path)
    if header is None:
        return 0
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise SchemaError(path, f"cannot read the schema version: {exc}") from exc
    return int(row[0])


def check_readable(path: Path) -> None:
    """Refuse a database whose schema pages are corrupt, before anything writes to it.

    Only for files still in rollback-journal mode: switching them to WAL would rewrite the header. Errors
    other than corruption (busy, locked, another process converting the file right now) are left to the
    writer, which re-checks everything under its lock.
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) in _CORRUPTION_CODES:
            raise SchemaError(path, f"database is corrupt ({exc}); the file was left untouched") from exc
        return
    if result is None or result[0] != "ok":
        detail = result[0] if result else "no result"
        raise SchemaError(path, f"database failed its integrity check ({detail}); file left untouched")


def check_before_write(path: Path, latest: int) -> None:
    """Everything that can be refused without writing: header, version, page integrity."""
    header = read_header(path)
    if header is None:
        return
    check_known_version(path, header.user_version, latest)
    if not header.wal:
        check_readable(path)
