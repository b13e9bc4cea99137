"""The schema's own behaviour: triggers, views, constraints and foreign keys, checked with plain SQL."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autobot.storage.connection import connect
from autobot.storage.migrate import migrate


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = tmp_path / "files.db"
    migrate(db)
    connection = connect(db)
    try:
        yield connection
    finally:
        connection.close()


def add_file(
    conn: sqlite3.Connection, session_id: str = "s1", size: int = 10, mime: str | None = "text/plain"
) -> str:
    file_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO conversation_files (file_id, session_id, original_filename, stored_filename, file_path,"
        " file_size, file_hash, mime_type, uploaded_by) VALUES (?, ?, 'a.txt', ?, '/x', ?, 'h', ?, 'alice')",
        (file_id, session_id, file_id + ".txt", size, mime),
    )
    return file_id


def associate(conn: sqlite3.Connection, file_id: str, session_id: str, message_id: str | None = None) -> None:
    conn.execute(
        "INSERT INTO session_file_associations (session_id, file_id, message_id) VALUES (?, ?, ?)",
        (session_id, file_id, message_id),
    )


def test_every_connection_has_foreign_keys_on(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_soft_delete_sets_deleted_at_and_restore_clears_it(conn: sqlite3.Connection) -> None:
    file_id = add_file(conn)
    assert conn.execute("SELECT deleted_at FROM conversation_files").fetchone() == (None,)
    conn.execute("UPDATE conversation_files SET is_deleted = 1 WHERE file_id = ?", (file_id,))
    (deleted_at, age_s) = conn.execute(
        "SELECT deleted_at, (julianday('now') - julianday(deleted_at)) * 86400 FROM conversation_files"
    ).fetchone()
    assert deleted_at is not None
    assert 0 <= age_s < 60
    conn.execute("UPDATE conversation_files SET is_deleted = 0 WHERE file_id = ?", (file_id,))
    assert conn.execute("SELECT deleted_at FROM conversation_files").fetchone() == (None,)


def test_other_updates_leave_deleted_at_alone(conn: sqlite3.Connection) -> None:
    add_file(conn)
    conn.execute("UPDATE conversation_files SET mime_type = 'text/csv'")
    assert conn.execute("SELECT deleted_at FROM conversation_files").fetchone() == (None,)


def test_insert_logs_an_upload_with_size_and_mime(conn: sqlite3.Connection) -> None:
    file_id = add_file(conn, size=1234, mime="application/pdf")
    rows = conn.execute(
        "SELECT file_id, access_type, accessed_by, access_metadata FROM file_access_log"
    ).fetchall()
    assert len(rows) == 1
    logged_id, access_type, accessed_by, metadata = rows[0]
    assert (logged_id, access_type, accessed_by) == (file_id, "upload", "alice")
    assert json.loads(metadata) == {"file_size": 1234, "mime_type": "application/pdf"}


def test_association_schedules_cleanup_thirty_days_out(conn: sqlite3.Connection) -> None:
    file_id = add_file(conn)
    associate(conn, file_id, "s1")
    row = conn.execute(
        "SELECT file_id, session_id, cleanup_reason, is_processed,"
        " julianday(scheduled_deletion_time) - julianday('now') FROM file_cleanup_queue"
    ).fetchone()
    assert row[:4] == (file_id, "s1", "session_ended", 0)
    assert 29.99 < row[4] <= 30.0


def test_unknown_file_id_is_refused_by_every_child_table(conn: sqlite3.Connection) -> None:
    ghost = str(uuid.uuid4())
    statements = [
        ("INSERT INTO file_metadata (file_id, metadata_key, metadata_value) VALUES (?, 'k', 'v')", (ghost,)),
        ("INSERT INTO session_file_associations (session_id, file_id) VALUES ('s', ?)", (ghost,)),
        ("INSERT INTO file_access_log (file_id, access_type) VALUES (?, 'view')", (ghost,)),
        (
            "INSERT INTO file_cleanup_queue (file_id, session_id, scheduled_deletion_time)"
            " VALUES (?, 's', CURRENT_TIMESTAMP)",
            (ghost,),
        ),
    ]
    for sql, params in statements:
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            conn.execute(sql, params)


def test_deleting_a_file_row_cascades(conn: sqlite3.Connection) -> None:
    file_id = add_file(conn)
    keep = add_file(conn)
    associate(conn, file_id, "s1")
    associate(conn, keep, "s1")
    conn.execute(
        "INSERT INTO file_metadata (file_id, metadata_key, metadata_value) VALUES (?, 'k', 'v')", (file_id,)
    )
    conn.execute("DELETE FROM conversation_files WHERE file_id = ?", (file_id,))
    for table in ("file_metadata", "session_file_associations", "file_access_log", "file_cleanup_queue"):
        rows = conn.execute(f"SELECT file_id FROM {table}").fetchall()
        assert (file_id,) not in rows, table
    assert conn.execute("SELECT count(*) FROM session_file_associations").fetchone() == (1,)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE conversation_files SET file_size = -1", "CHECK"),
        ("UPDATE conversation_files SET is_deleted = 2", "CHECK"),
        ("UPDATE conversation_files SET is_deleted = NULL", "NOT NULL"),
        (
            "INSERT INTO file_access_log (file_id, access_type)"
            " SELECT file_id, 'steal' FROM conversation_files",
            "CHECK",
        ),
        (
            "INSERT INTO session_file_associations (session_id, file_id, association_type)"
            " SELECT 's', file_id, 'borrowed' FROM conversation_files",
            "CHECK",
        ),
        (
            "INSERT INTO file_cleanup_queue (file_id, session_id, scheduled_deletion_time, cleanup_reason)"
            " SELECT file_id, 's', CURRENT_TIMESTAMP, 'whim' FROM conversation_files",
            "CHECK",
        ),
        ("INSERT INTO conversation_files SELECT * FROM conversation_files", "UNIQUE"),
    ],
)
def test_constraints(conn: sqlite3.Connection, sql: str, message: str) -> None:
    add_file(conn)
    with pytest.raises(sqlite3.IntegrityError, match=message):
        conn.execute(sql)


def test_metadata_key_is_unique_per_file(conn: sqlite3.Connection) -> None:
    file_id = add_file(conn)
    conn.execute(
        "INSERT INTO file_metadata (file_id, metadata_key, metadata_value) VALUES (?, 'k', '1')", (file_id,)
    )
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO file_metadata (file_id, metadata_key, metadata_value) VALUES (?, 'k', '2')",
            (file_id,),
        )


def test_active_files_view_counts_sessions_and_hides_deleted(conn: sqlite3.Connection) -> None:
    shared = add_file(conn, "s1")
    gone = add_file(conn, "s1")
    associate(conn, shared, "s1")
    associate(conn, shared, "s2")
    associate(conn, shared, "s2", message_id="m1")
    associate(conn, gone, "s1")
    conn.execute("UPDATE conversation_files SET is_deleted = 1 WHERE file_id = ?", (gone,))
    rows = conn.execute("SELECT file_id, session_count, last_associated_at FROM v_active_files").fetchall()
    assert len(rows) == 1
    assert rows[0][:2] == (shared, 2)
    assert rows[0][2] is not None


def test_session_summary_view_counts_each_file_once(conn: sqlite3.Connection) -> None:
    a = add_file(conn, "s1", size=100)
    b = add_file(conn, "s1", size=50)
    deleted = add_file(conn, "s1", size=7)
    associate(conn, a, "s1")
    associate(conn, a, "s1", message_id="m1")  # same file, second message: still one file, 100 bytes
    associate(conn, b, "s1")
    associate(conn, deleted, "s1")
    conn.execute("UPDATE conversation_files SET is_deleted = 1 WHERE file_id = ?", (deleted,))
    row = conn.execute(
        "SELECT file_count, total_size, first_file_added IS NOT NULL, last_file_added IS NOT NULL"
        " FROM v_session_file_summary WHERE session_id = 's1'"
    ).fetchone()
    assert row == (2, 150, 1, 1)


def test_pending_cleanups_view_shows_only_unprocessed_due_within_a_week(conn: sqlite3.Connection) -> None:
    soon = add_file(conn)
    processed = add_file(conn)
    later = add_file(conn)
    for file_id, due, done in [(soon, "+3 days", 0), (processed, "+1 day", 1), (later, "+8 days", 0)]:
        conn.execute(
            "INSERT INTO file_cleanup_queue (file_id, session_id, scheduled_deletion_time, is_processed)"
            " VALUES (?, 's1', datetime('now', ?), ?)",
            (file_id, due, done),
        )
    rows = conn.execute(
        "SELECT file_id, cleanup_reason, minutes_until_deletion FROM v_pending_cleanups"
    ).fetchall()
    assert len(rows) == 1
    assert rows[0][:2] == (soon, "session_ended")
    assert abs(rows[0][2] - 3 * 24 * 60) <= 1
