"""Bring a database file to the latest schema: safely, idempotently, and once under concurrent start-up.

Order matters and each step is there for a reason:
1. load the migration files first, so a packaging error creates nothing;
2. read the file's header without writing: a non-database or a newer schema is refused untouched;
3. ``PRAGMA journal_mode=WAL`` outside any transaction (it fails inside one);
4. ``BEGIN IMMEDIATE`` takes the write lock *before* reading ``user_version``, so of N processes starting at
   once exactly one applies each migration and the others then see the new version;
5. statements run one by one: ``executescript`` would COMMIT first and silently drop that lock.
"""

from __future__ import annotations

import random
import sqlite3
import time
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from autobot.storage.connection import connect
from autobot.storage.errors import SchemaError
from autobot.storage.loader import Migration, load_migrations
from autobot.storage.probe import check_before_write, check_known_version

# Start-up may queue behind other processes applying migrations; give them longer than a request would.
MIGRATION_BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class MigrationResult:
    path: Path
    from_version: int
    to_version: int
    applied: tuple[str, ...]  # file names of the migrations this call applied, in order

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def migrate(
    path: Path | str,
    *,
    migrations_dir: Path | Traversable | None = None,
    busy_timeout_s: float = MIGRATION_BUSY_TIMEOUT_S,
) -> MigrationResult:
    """Create the database if needed and apply every pending migration. Safe to call from many processes.

    Raises MigrationSourceError if the migration files are missing or malformed, SchemaError (with the
    path) if the database is corrupt, newer than this code, locked for longer than the busy timeout, or a
    migration fails (then nothing of it is kept).
    """
    path = Path(path)
    migrations = load_migrations(migrations_dir)
    latest = migrations[-1].version
    check_before_write(path, latest)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SchemaError(path, f"cannot create the directory {path.parent}: {exc.strerror or exc}") from exc
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            return _migrate_once(path, migrations, busy_timeout_s)
        except sqlite3.OperationalError as exc:
            # SQLite answers some lock conflicts at once, without waiting on the busy timeout: switching a
            # brand-new file to WAL while another process does the same, or opening the WAL while the last
            # connection is checkpointing it away. The whole attempt is one transaction, so it is retried.
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise SchemaError(path, f"migration failed: {exc}") from exc
            time.sleep(random.uniform(0.01, 0.1))  # jitter, so retrying processes spread out


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _migrate_once(path: Path, migrations: tuple[Migration, ...], busy_timeout_s: float) -> MigrationResult:
    try:
        conn = connect(path, busy_timeout_s=busy_timeout_s)
    except sqlite3.OperationalError:
        raise
    except sqlite3.Error as exc:
        raise SchemaError(path, f"cannot open database: {exc}") from exc
    try:
        _enable_wal(conn, path)
        return _apply_locked(conn, path, migrations)
    except sqlite3.OperationalError:
        raise
    except sqlite3.Error as exc:
        raise SchemaError(path, f"migration failed: {exc}") from exc
    finally:
        conn.close()


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if mode != "wal":
        raise SchemaError(path, f"cannot switch the database to WAL mode (journal mode stays {mode!r})")


def _apply_locked(conn: sqlite3.Connection, path: Path, migrations: tuple[Migration, ...]) -> MigrationResult:
    latest = migrations[-1].version
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _user_version(conn)
        check_known_version(path, current, latest)
        applied: list[str] = []
        for migration in migrations:
            if migration.version > current:
                _apply_one(conn, path, migration)
                applied.append(migration.name)
        if applied:
            _check_foreign_keys(conn, path)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return MigrationResult(path=path, from_version=current, to_version=latest, applied=tuple(applied))


def _apply_one(conn: sqlite3.Connection, path: Path, migration: Migration) -> None:
    for statement in migration.statements:
        try:
            conn.execute(statement)
        except sqlite3.Error as exc:
            first_line = next(line for line in statement.splitlines() if line.strip())
            raise SchemaError(
                path, f"migration {migration.name} failed ({exc}) in statement: {first_line.strip()[:100]}"
            ) from exc
    # An int from the file name, never user input: safe to format into the PRAGMA, which takes no parameters.
    conn.execute(f"PRAGMA user_version = {migration.version:d}")


def _check_foreign_keys(conn: sqlite3.Connection, path: Path) -> None:
    # A migration that rebuilds a table could leave dangling references that foreign_keys=ON cannot see.
    violations = conn.execute("PRAGMA foreign_key_check").fetchall()
    if violations:
        count = len(violations)
        raise SchemaError(path, f"migrations left {count} foreign key violation(s), e.g. {violations[0]}")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
