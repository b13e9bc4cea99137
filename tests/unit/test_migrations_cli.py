"""`autobot db init` and `autobot db version`, through click's runner and once as a real process."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from autobot.cli import main
from autobot.storage.loader import latest_version

TABLES = [
    "conversation_files",
    "file_access_log",
    "file_cleanup_queue",
    "file_metadata",
    "session_file_associations",
]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_init_creates_then_reports_up_to_date(tmp_path: Path) -> None:
    db = tmp_path / "data" / "conversation_files.db"
    code, out, err = run("db", "init", "--db", str(db))
    assert (code, err) == (0, "")
    assert f"0 -> {latest_version()}" in out
    assert "0001_initial.sql" in out
    code, out, _ = run("db", "init", "--db", str(db))
    assert code == 0
    assert "up to date" in out


def test_version_of_a_missing_database_is_behind_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "files.db"
    code, out, err = run("db", "version", "--db", str(db))
    assert code == 1
    assert out.splitlines() == ["current: 0", f"latest: {latest_version()}"]
    assert "autobot db init" in err
    assert not db.parent.exists()


def test_version_after_init_is_current_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    assert run("db", "init", "--db", str(db))[0] == 0
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    code, out, _ = run("db", "version", "--db", str(db))
    assert code == 0
    assert out.splitlines() == [f"current: {latest_version()}", f"latest: {latest_version()}"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_corrupt_file_exits_2_with_message_and_is_untouched(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    db.write_bytes(os.urandom(4096))
    before = db.read_bytes()
    for command in ("init", "version"):
        code, _, err = run("db", command, "--db", str(db))
        assert code == 2, command
        assert "not an SQLite database" in err
        assert str(db) in err
    assert db.read_bytes() == before


def test_newer_database_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "files.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 42")
    conn.close()
    before = db.read_bytes()
    code, _, err = run("db", "init", "--db", str(db))
    assert code == 2
    assert "newer than this code" in err
    code, out, err = run("db", "version", "--db", str(db))
    assert code == 2
    assert "current: 42" in out
    assert db.read_bytes() == before


def test_db_option_is_required() -> None:
    code, _, err = run("db", "init")
    assert code == 2
    assert "--db" in err


def test_real_autobot_process_initialises_the_plan_way(tmp_path: Path) -> None:
    """The plan's own verification: a fresh path, one command, then the five tables are there."""
    exe = shutil.which("autobot", path=str(Path(sys.executable).parent)) or shutil.which("autobot")
    assert exe is not None, "the autobot console script is not installed"
    db = tmp_path / "data" / "conversation_files.db"
    done = subprocess.run(
        [exe, "db", "init", "--db", str(db)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        tables = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    conn.close()
    assert [name for (name,) in tables] == TABLES
    version = subprocess.run(
        [exe, "db", "version", "--db", str(db)], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert f"current: {latest_version()}" in version.stdout
