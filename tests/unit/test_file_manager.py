"""ConversationFileManager on real SQLite files and a real files directory."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from autobot.config import BackendConfig
from autobot.storage import (
    ConversationFileManager,
    EmptyFileError,
    FileDeletedError,
    FileIntegrityError,
    FileRecord,
    FileTooLargeError,
    InvalidArgumentError,
    InvalidFilenameError,
    StorageBackendError,
    StorageNotInitializedError,
    UnknownFileError,
)
from autobot.storage.validation import safe_extension

MAX_BYTES = 1024


@pytest.fixture
async def manager(tmp_path: Path) -> ConversationFileManager:
    instance = ConversationFileManager(
        tmp_path / "db" / "files.db", tmp_path / "files", max_file_bytes=MAX_BYTES
    )
    await instance.initialize()
    return instance


def rows(manager: ConversationFileManager, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(manager.db_path) as conn:
        result = conn.execute(sql, params).fetchall()
    conn.close()
    return result


def stored_files(manager: ConversationFileManager) -> list[str]:
    return sorted(p.name for p in manager.files_dir.iterdir())


# -- lifecycle ----------------------------------------------------------------------------------------------


async def test_constructor_touches_nothing_and_use_before_initialize_fails(tmp_path: Path) -> None:
    instance = ConversationFileManager(tmp_path / "db" / "files.db", tmp_path / "files")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageNotInitializedError, match="initialize"):
        await instance.add_file("s1", "a.txt", b"x")
    with pytest.raises(StorageNotInitializedError):
        await instance.list_files("s1")
    assert list(tmp_path.iterdir()) == []


async def test_first_upload_on_a_fresh_install(tmp_path: Path) -> None:
    db = tmp_path / "custom" / "place" / "conv.db"  # a non-default path must be honoured, not replaced
    instance = ConversationFileManager(db, tmp_path / "uploads")
    result = await instance.initialize()
    assert result.applied == ("0001_initial.sql",)
    content = b"hello, world\n"
    record = await instance.add_file(
        "session-1",
        "Notes.TXT",
        content,
        mime_type="text/plain",
        uploaded_by="alice",
        metadata={"source": "chat", "lang": "en"},
        message_id="m-1",
    )
    assert db.is_file()
    assert re.fullmatch(r"[0-9a-f-]{36}", record.file_id)
    assert record.stored_filename == record.file_id.replace("-", "") + ".txt"
    on_disk = tmp_path / "uploads" / record.stored_filename
    assert on_disk.read_bytes() == content
    assert record.file_path == str(on_disk)
    assert record.file_size == len(content)
    assert record.file_hash == hashlib.sha256(content).hexdigest()
    assert (record.session_id, record.original_filename) == ("session-1", "Notes.TXT")
    assert (record.mime_type, record.uploaded_by, record.is_deleted, record.deleted_at) == (
        "text/plain",
        "alice",
        False,
        None,
    )
    assert dict(record.metadata) == {"source": "chat", "lang": "en"}
    assert record.uploaded_at.tzinfo is not None
    assert rows(
        instance, "SELECT session_id, association_type, message_id FROM session_file_associations"
    ) == [("session-1", "upload", "m-1")]
    assert rows(instance, "SELECT access_type, accessed_by FROM file_access_log") == [("upload", "alice")]
    assert rows(instance, "SELECT count(*) FROM file_cleanup_queue") == [(1,)]


async def test_initialize_is_idempotent(manager: ConversationFileManager) -> None:
    record = await manager.add_file("s1", "a.txt", b"data")
    again = await manager.initialize()
    assert again.applied == ()
    assert await manager.get_file(record.file_id) == record


async def test_from_config_uses_the_configured_paths_and_limit(tmp_path: Path) -> None:
    config = BackendConfig(
        database=tmp_path / "d" / "c.db",
        files_dir=tmp_path / "f",
        transcripts_dir=tmp_path / "t",
        max_upload_bytes=5,
    )
    instance = ConversationFileManager.from_config(config)
    await instance.initialize()
    assert (tmp_path / "d" / "c.db").is_file()
    assert (tmp_path / "f").is_dir()
    with pytest.raises(FileTooLargeError):
        await instance.add_file("s1", "a.bin", b"123456")


# -- validation -------------------------------------------------------------------------------------------


async def test_empty_and_oversize_content_are_refused(manager: ConversationFileManager) -> None:
    with pytest.raises(EmptyFileError):
        await manager.add_file("s1", "a.txt", b"")
    with pytest.raises(FileTooLargeError) as excinfo:
        await manager.add_file("s1", "a.txt", b"x" * (MAX_BYTES + 1))
    assert (excinfo.value.size, excinfo.value.limit) == (MAX_BYTES + 1, MAX_BYTES)
    assert isinstance(excinfo.value, ValueError)
    await manager.add_file("s1", "a.txt", b"x" * MAX_BYTES)  # the limit itself is allowed


@pytest.mark.parametrize(
    "filename",
    ["", "   ", "../etc/passwd", "a/b.txt", "a\\b.txt", "a\x00b.txt", "..", ".", "a\nb", "x" * 256],
)
async def test_bad_filenames_are_refused_and_nothing_is_written(
    manager: ConversationFileManager, filename: str
) -> None:
    with pytest.raises(InvalidFilenameError):
        await manager.add_file("s1", filename, b"data")
    assert stored_files(manager) == []
    assert rows(manager, "SELECT count(*) FROM conversation_files") == [(0,)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"session_id": ""},
        {"metadata": {"k": 1}},
        {"metadata": {"": "v"}},
        {"metadata": ["not", "a", "mapping"]},
        {"uploaded_by": "a\x00b"},
        {"message_id": ""},
    ],
)
async def test_bad_arguments_are_refused(manager: ConversationFileManager, kwargs: dict[str, Any]) -> None:
    call: dict[str, Any] = {"session_id": "s1", "filename": "a.txt", "content": b"data", **kwargs}
    with pytest.raises(InvalidArgumentError):
        await manager.add_file(**call)
    assert stored_files(manager) == []


@pytest.mark.parametrize(
    ("filename", "extension"),
    [("a.PDF", ".pdf"), ("archive.tar.gz", ".gz"), (".bashrc", ""), ("noext", ""), ("x.p$p", ""), ("a.", "")],
)
def test_stored_extension_is_sanitised(filename: str, extension: str) -> None:
    assert safe_extension(filename) == extension


# -- reading, listing, deleting ---------------------------------------------------------------------------


async def test_unknown_ids(manager: ConversationFileManager) -> None:
    assert await manager.get_file("00000000-0000-0000-0000-000000000000") is None
    with pytest.raises(UnknownFileError) as excinfo:
        await manager.read_content("nope")
    assert excinfo.value.file_id == "nope"
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(UnknownFileError):
        await manager.soft_delete("nope")


async def test_read_content_round_trips_and_logs_a_download(manager: ConversationFileManager) -> None:
    record = await manager.add_file("s1", "a.bin", bytes(range(256)))
    assert await manager.read_content(record.file_id, accessed_by="bob") == bytes(range(256))
    logged = rows(manager, "SELECT access_type, accessed_by FROM file_access_log ORDER BY log_id")
    assert logged == [("upload", None), ("download", "bob")]


async def test_tampered_or_missing_content_is_an_integrity_error(manager: ConversationFileManager) -> None:
    record = await manager.add_file("s1", "a.txt", b"original")
    path = manager.files_dir / record.stored_filename
    path.write_bytes(b"tampered")
    with pytest.raises(FileIntegrityError, match="SHA-256"):
        await manager.read_content(record.file_id)
    path.unlink()
    with pytest.raises(FileIntegrityError, match="missing"):
        await manager.read_content(record.file_id)


async def test_soft_delete(manager: ConversationFileManager) -> None:
    record = await manager.add_file("s1", "a.txt", b"data")
    keep = await manager.add_file("s1", "b.txt", b"more")
    assert await manager.soft_delete(record.file_id, deleted_by="carol") is True
    assert await manager.soft_delete(record.file_id, deleted_by="carol") is False
    deleted = await manager.get_file(record.file_id)
    assert deleted is not None
    assert deleted.is_deleted
    assert deleted.deleted_at is not None
    assert [r.file_id for r in await manager.list_files("s1")] == [keep.file_id]
    assert [r.file_id for r in await manager.list_files("s1", include_deleted=True)] == [
        record.file_id,
        keep.file_id,
    ]
    with pytest.raises(FileDeletedError):
        await manager.read_content(record.file_id)
    deletes = rows(manager, "SELECT file_id, accessed_by FROM file_access_log WHERE access_type = 'delete'")
    assert deletes == [(record.file_id, "carol")]  # one row: the second call changed nothing
    assert (manager.files_dir / record.stored_filename).exists()  # content waits for the cleanup queue


async def test_soft_delete_session_deletes_the_sessions_own_files_only(
    manager: ConversationFileManager,
) -> None:
    own = await manager.add_file("s1", "a.txt", b"data")
    gone = await manager.add_file("s1", "b.txt", b"more")
    await manager.soft_delete(gone.file_id)
    shared = await manager.add_file("s2", "shared.txt", b"shared")
    with sqlite3.connect(manager.db_path) as conn:  # s2's file is also associated with s1 (plan schema)
        conn.execute(
            "INSERT INTO session_file_associations (session_id, file_id, association_type)"
            " VALUES (?, ?, 'reference')",
            ("s1", shared.file_id),
        )
    conn.close()
    assert await manager.soft_delete_session("s1") == 1  # the one still active: a rerun changes nothing
    assert await manager.soft_delete_session("s1") == 0
    assert [(r.file_id, r.is_deleted) for r in await manager.list_files("s1", include_deleted=True)] == [
        (own.file_id, True),
        (gone.file_id, True),
        (shared.file_id, False),
    ]
    deletes = rows(
        manager, "SELECT file_id FROM file_access_log WHERE access_type = 'delete' ORDER BY log_id"
    )
    assert deletes == [(gone.file_id,), (own.file_id,)]
    assert await manager.session_ids() == ["s1", "s2"]
    with pytest.raises(InvalidArgumentError):
        await manager.soft_delete_session("")


async def test_list_files_is_per_session_in_upload_order(manager: ConversationFileManager) -> None:
    first = await manager.add_file("s1", "1.txt", b"1")
    await manager.add_file("s2", "other.txt", b"2")
    third = await manager.add_file("s1", "3.txt", b"3")
    assert [r.file_id for r in await manager.list_files("s1")] == [first.file_id, third.file_id]
    assert await manager.list_files("unknown-session") == []


async def test_summary_and_stats(manager: ConversationFileManager) -> None:
    a = await manager.add_file("s1", "a.txt", b"a" * 10)
    await manager.add_file("s1", "b.txt", b"b" * 20)
    await manager.add_file("s2", "c.txt", b"c" * 40)
    await manager.soft_delete(a.file_id)
    summary = await manager.session_summary("s1")
    assert (summary.session_id, summary.file_count, summary.total_size) == ("s1", 1, 20)
    assert summary.first_file_added is not None
    assert summary.last_file_added is not None
    empty = await manager.session_summary("nobody")
    assert (empty.file_count, empty.total_size, empty.first_file_added) == (0, 0, None)
    stats = await manager.storage_stats()
    assert stats.to_dict() == {
        "total_files": 3,
        "active_files": 2,
        "deleted_files": 1,
        "total_bytes": 70,
        "active_bytes": 60,
        "sessions": 2,
    }


# -- consistency --------------------------------------------------------------------------------------------


async def test_failed_insert_removes_the_stored_file(manager: ConversationFileManager) -> None:
    with sqlite3.connect(manager.db_path) as conn:  # a real database failure, raised by SQLite itself
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON session_file_associations"
            " BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
        )
    conn.close()
    with pytest.raises(StorageBackendError, match="refused by test trigger"):
        await manager.add_file("s1", "a.txt", b"data", metadata={"k": "v"})
    assert stored_files(manager) == []  # neither the file nor a temp file is left
    for table in ("conversation_files", "file_metadata", "file_access_log", "file_cleanup_queue"):
        assert rows(manager, f"SELECT count(*) FROM {table}") == [(0,)], table


async def test_concurrent_uploads_all_land(manager: ConversationFileManager) -> None:
    records = await asyncio.gather(
        *(manager.add_file("s1", f"{i}.txt", f"file {i}".encode()) for i in range(30))
    )
    assert len({r.file_id for r in records}) == 30
    assert len(await manager.list_files("s1")) == 30
    assert len(stored_files(manager)) == 30
    for record in records:
        assert await manager.read_content(record.file_id) == f"file {record.original_filename[:-4]}".encode()


# -- the record type ----------------------------------------------------------------------------------------


async def test_file_record_is_frozen_and_json_ready(manager: ConversationFileManager) -> None:
    record = await manager.add_file("s1", "a.txt", b"data", metadata={"k": "v"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.file_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.metadata["k"] = "changed"  # type: ignore[index]
    payload = json.loads(json.dumps(record.to_dict()))
    assert payload["file_id"] == record.file_id
    assert payload["metadata"] == {"k": "v"}
    assert payload["uploaded_at"] == record.uploaded_at.isoformat()
    assert payload["deleted_at"] is None
    assert "file_path" not in payload
    assert "stored_filename" not in payload
    assert isinstance(await manager.get_file(record.file_id), FileRecord)
