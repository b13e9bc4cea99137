"""Find the migration files and cut them into single statements (no database access here).

Migrations are ``NNNN_name.sql`` files shipped inside the package. Versions start at 1 and have no gaps, so a
missing file is a packaging error reported by name instead of a schema silently left behind.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from autobot.storage.errors import MigrationSourceError

_FILENAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "0001_initial.sql"
    statements: tuple[str, ...]


def packaged_migrations_dir() -> Traversable:
    return resources.files("autobot.storage").joinpath("migrations")


def split_statements(sql: str, *, source: str = "<sql>") -> list[str]:
    """Split a script into statements, each ending with its semicolon.

    Cuts only where ``sqlite3.complete_statement`` agrees, so semicolons inside trigger bodies, string
    literals and comments stay where they are. Comment-only chunks are dropped.
    """
    statements: list[str] = []
    start = 0
    for index, char in enumerate(sql):
        if char != ";":
            continue
        candidate = sql[start : index + 1]
        if sqlite3.complete_statement(candidate):
            if _has_code(candidate[:-1]):
                statements.append(candidate.strip())
            start = index + 1
    rest = sql[start:]
    if _has_code(rest):
        first_line = rest.strip().splitlines()[0]
        raise MigrationSourceError(f"{source}: statement not terminated by ';' near: {first_line[:80]!r}")
    return statements


def _has_code(text: str) -> bool:
    return bool(_COMMENTS.sub("", text).strip())


def load_migrations(directory: Path | Traversable | None = None) -> tuple[Migration, ...]:
    """Read every migration, in version order. Default: the files packaged with autobot.storage."""
    source = packaged_migrations_dir() if directory is None else directory
    if not source.is_dir():
        raise MigrationSourceError(f"migrations directory not found: {source}")
    found: dict[int, Traversable] = {}
    for entry in source.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILENAME.match(entry.name)
        if match is None:
            raise MigrationSourceError(f"{source}: migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match["version"])
        if version in found:
            raise MigrationSourceError(
                f"{source}: two migrations with version {version}: {found[version].name}, {entry.name}"
            )
        found[version] = entry
    if not found:
        raise MigrationSourceError(f"no migration files (NNNN_name.sql) in {source}")
    migrations: list[Migration] = []
    for expected, version in enumerate(sorted(found), start=1):
        if version != expected:
            raise MigrationSourceError(f"{source}: migration {expected:04d}_*.sql is missing")
        entry = found[version]
        label = f"{source}/{entry.name}"
        statements = split_statements(entry.read_text(encoding="utf-8"), source=label)
        if not statements:
            raise MigrationSourceError(f"{label}: holds no SQL statement")
        migrations.append(Migration(version=version, name=entry.name, statements=tuple(statements)))
    return tuple(migrations)


def latest_version(directory: Path | Traversable | None = None) -> int:
    return load_migrations(directory)[-1].version
