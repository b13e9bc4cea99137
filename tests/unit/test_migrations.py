"""Plan fix 1: the migration files and the runner, on real SQLite files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from autobot.storage.errors import MigrationSourceError, SchemaError
from autobot.storage.loader import latest_version, load_migrations, split_statements
from autobot.storage.migrate import migrate
from autobot.storage.probe import read_version

TABLES = {
    "conversation_files",
    "file_metadata",
    "session_file_associations",
    "file_access_log",
    "file_cleanup_queue",
}
INDEXES = {
    "idx_conversation_files_session": ("conversation_files", ["session_id", "is_deleted"]),
    "idx_conversation_files_hash": ("conversation_files", ["file_hash", "is_deleted"]),
    "idx_conversation_files_uploaded": ("conversation_files", ["uploaded_at"]),
    "idx_file_metadata_file": ("file_metadata", ["file_id"]),
    "idx_session_file_associations_session": ("session_file_associations", ["session_id"]),
    "idx_session_file_associations_file": ("session_file_associations", ["file_id"]),
    "idx_file_access_log_file": ("file_access_log", ["file_id", "accessed_at"]),
    "idx_file_cleanup_queue_pending": ("file_cleanup_queue", ["is_processed", "scheduled_deletion_time"]),
}
TRIGGERS = {
    "trg_conversation_files_soft_delete",
    "trg_conversation_files_upload_log",
    "trg_session_file_associations_schedule_cleanup",
}
VIEWS = {"v_active_files", "v_session_file_summary", "v_pending_cleanups"}


def objects(path: Path, kind: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'", (kind,)
        ).fetchall()
    return {name for (name,) in rows}


def schema_dump(path: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")
    return directory


# -- splitting and loading ---------------------------------------------------------------------------------


def test_split_keeps_trigger_bodies_strings_and_comments_whole() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    /* block; comment */
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        INSERT INTO t VALUES ('one;');
        UPDATE t SET x = 'two' WHERE x = ';';
    END;
    INSERT INTO t VALUES ('it''s; fine');
    -- trailing comment
    """
    statements = split_statements(sql)
    assert len(statements) == 3
    assert statements[0].endswith("CREATE TABLE t (x TEXT DEFAULT 'a;b');")
    assert statements[1].startswith("/* block; comment */\n    CREATE TRIGGER")
    assert statements[1].endswith("END;")
    assert statements[2] == "INSERT INTO t VALUES ('it''s; fine');"
    conn = sqlite3.connect(":memory:")
    for statement in statements:
        conn.execute(statement)  # each one is a single, complete statement
    # the insert and the row its trigger added, semicolons intact
    assert sorted(conn.execute("SELECT x FROM t").fetchall()) == [("it's; fine",), ("one;",)]


def test_split_refuses_unterminated_statement() -> None:
    with pytest.raises(MigrationSourceError, match="not terminated"):
        split_statements("CREATE TABLE a (x);\nCREATE TABLE b (y)", source="0009_x.sql")


def test_packaged_migrations_load() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "0001_initial.sql"
    assert latest_version() == migrations[-1].version
    # 5 tables + 8 indexes + 3 triggers + 3 views, one statement each
    assert len(migrations[0].statements) == 19


def test_missing_migrations_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    db = tmp_path / "db" / "files.db"
    with pytest.raises(MigrationSourceError, match="nowhere"):
        migrate(db, migrations_dir=missing)
    assert not db.exists()
    assert not db.parent.exists()


def test_empty_migrations_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(MigrationSourceError, match="no migration files"):
        load_migrations(tmp_path / "m")


def test_missing_migration_file_in_sequence_is_named(tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {"0001_a.sql": "CREATE TABLE a (x);", "0003_c.sql": "CREATE TABLE c (x);"},
    )
    db = tmp_path / "files.db"
    with pytest.raises(MigrationSourceError, match="migration 0002_"):
        migrate(db, migrations_dir=directory)
    assert not db.exists()


@pytest.mark.parametrize("name", ["1_a.sql", "0001-a.sql", "0001_A.sql"])
def test_badly_named_migration_is_refused(tmp_path: Path, name: str) -> None:
    directory = write_migrations(tmp_path / "m", {name: "CREATE TABLE a (x);"})
    with pytest.raises(MigrationSourceError, match=r"NNNN_name\.sql"):
        load_migrations(directory)


# -- the runner ----------------------------------------------------------------------------------------------


def test_fresh_database_gets_the_whole_schema(tmp_path: Path) -> None:
    db = tmp_path / "data" / "nested" / "conversation_files.db"  # parent directories do not exist yet
    result = migrate(db)
    assert result.from_version == 0
    assert result.to_version == 1
    assert result.applied == ("0001_initial.sql",)
    assert objects(db, "table") == TABLES
    assert objects(db, "trigger") == TRIGGERS
    assert objects(db, "view") == VIEWS
    assert objects(db, "index") == set(INDEXES)
    with sqlite3.connect(db) as conn:
        for index, (table, columns) in INDEXES.items():
            info = conn.execute(f"PRAGMA index_info({index})").fetchall()
            assert [row[2] for row in info] == columns, index
            assert conn.execute(f"PRAGMA index_list({table})").fetchall()
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_existing_database_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    migrate(db)
    before = schema_dump(db)
    for _ in range(3):
        result = migrate(db)
        assert result.applied == ()
        assert (result.from_version, result.to_version) == (1, 1)
    assert schema_dump(db) == before
    assert read_version(db) == 1


def test_new_migration_is_applied_on_top(tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (x);"})
    db = tmp_path / "files.db"
    assert migrate(db, migrations_dir=directory).applied == ("0001_a.sql",)
    write_migrations(directory, {"0002_b.sql": "CREATE TABLE b (y); INSERT INTO a VALUES (1);"})
    result = migrate(db, migrations_dir=directory)
    assert (result.from_version, result.to_version, result.applied) == (1, 2, ("0002_b.sql",))
    assert objects(db, "table") == {"a", "b"}


def test_failing_migration_keeps_nothing(tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE a (x);",
            "0002_b.sql": "CREATE TABLE b (y);\nINSERT INTO missing_table VALUES (1);",
        },
    )
    db = tmp_path / "files.db"
    with pytest.raises(SchemaError, match=r"0002_b\.sql.*missing_table") as excinfo:
        migrate(db, migrations_dir=directory)
    assert excinfo.value.path == db
    # One transaction for all pending migrations: neither 0001 nor the first half of 0002 survived.
    assert read_version(db) == 0
    assert objects(db, "table") == set()


def test_newer_database_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = digest(db)
    with pytest.raises(SchemaError, match="newer than this code") as excinfo:
        migrate(db)
    assert str(db) in str(excinfo.value)
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files.db"]  # no -wal/-shm: never opened to write


def test_newer_version_hidden_in_the_wal_is_caught_under_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    migrate(db)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA wal_autocheckpoint = 0")  # keep the new version in the -wal file only
        holder.execute("PRAGMA user_version = 7")
        with db.open("rb") as handle:
            assert int.from_bytes(handle.read(100)[60:64], "big") == 1  # the header still says 1
        with pytest.raises(SchemaError, match="version 7 is newer"):
            migrate(db)
        assert holder.execute("PRAGMA user_version").fetchone() == (7,)
    finally:
        holder.close()


def test_random_bytes_are_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    db.write_bytes(os.urandom(8192))
    before = digest(db)
    with pytest.raises(SchemaError, match="not an SQLite database") as excinfo:
        migrate(db)
    assert excinfo.value.path == db
    assert digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files.db"]


def test_valid_header_with_garbage_pages_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    data = db.read_bytes()
    db.write_bytes(data[:100] + os.urandom(len(data) - 100))
    before = digest(db)
    with pytest.raises(SchemaError, match=r"corrupt|integrity"):
        migrate(db)
    assert digest(db) == before


def test_corrupt_table_page_is_refused_before_the_wal_switch(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 20,) for i in range(500)])
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page : 3 * page] = os.urandom(page)  # page 3: part of table t
    db.write_bytes(bytes(data))
    before = digest(db)
    with pytest.raises(SchemaError, match=r"corrupt|integrity"):
        migrate(db)
    assert digest(db) == before


def test_directory_instead_of_file_is_a_schema_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="cannot read"):
        migrate(tmp_path)


def test_read_version_never_creates_the_file(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "files.db"
    assert read_version(db) == 0
    assert not db.parent.exists()
    migrate(db)
    assert read_version(db) == 1


def test_empty_file_counts_as_a_fresh_database(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    db.touch()
    assert migrate(db).applied == ("0001_initial.sql",)
    assert objects(db, "table") == TABLES
