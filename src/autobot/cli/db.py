"""`autobot db`: create, migrate and inspect the conversation-files database.

Exit codes: 0 success, 1 ``version`` found the database behind the code, 2 the database or the migration
files are unusable (message on stderr).
"""

from __future__ import annotations

from pathlib import Path

import click

from autobot.storage.errors import MigrationSourceError, SchemaError
from autobot.storage.loader import latest_version
from autobot.storage.migrate import migrate
from autobot.storage.probe import read_version

EXIT_BEHIND = 1
EXIT_ERROR = 2

_DB_OPTION = click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Path of the SQLite database (main-backend: backend.database in its config.yml).",
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_ERROR)


@click.group()
def db() -> None:
    """Create, migrate and inspect the conversation-files database."""


@db.command("init")
@_DB_OPTION
def init(db_path: Path) -> None:
    """Create the database if needed and apply pending migrations (safe to run any number of times)."""
    try:
        result = migrate(db_path)
    except (SchemaError, MigrationSourceError) as exc:
        _fail(str(exc))
        return
    if result.applied:
        click.echo(
            f"{db_path}: schema version {result.from_version} -> {result.to_version} "
            f"(applied {', '.join(result.applied)})"
        )
    else:
        click.echo(f"{db_path}: schema version {result.to_version} (up to date, nothing applied)")


@db.command("version")
@_DB_OPTION
def version(db_path: Path) -> None:
    """Print the database's schema version and the latest this code knows; exit 1 if behind. Never writes."""
    try:
        latest = latest_version()
        current = read_version(db_path)
    except (SchemaError, MigrationSourceError) as exc:
        _fail(str(exc))
        return
    click.echo(f"current: {current}")
    click.echo(f"latest: {latest}")
    if current > latest:
        _fail(f"{db_path}: schema version {current} is newer than this code knows ({latest})")
    if current < latest:
        state = "does not exist" if not db_path.exists() else f"is {latest - current} migration(s) behind"
        click.echo(f"{db_path} {state}; run: autobot db init --db {db_path}", err=True)
        raise SystemExit(EXIT_BEHIND)
