"""`autobot sessions list|export|adopt`: every conversation main-backend stores, for the operator (issue 15).

Run on the main-backend machine, as the service user, with main-backend's config (it names Redis, the
transcripts directory and the database):

    sudo -u autobot-svc /opt/autobot/current/venv/bin/autobot sessions list \\
        --config /etc/autobot/main-backend/config.yml

- `list`: every session id any store holds, with its status: `owned` (in the registry), `recorded` (only a
  durable owner record on this machine: Redis lost it) or `legacy` (stored before sessions had owners).
- `export ID`: the session as JSON: its messages (the whole transcript) and its file records. Reads only.
- `adopt ID`: give a stored session to an identity, so its owner sees it again: `--user NAME` (a login's user
  name), `--cookie-stdin` (an anonymous browser's `autobot_client` cookie value, read from stdin so it never
  shows in the process list or the shell history), or `--recorded` (the owner its durable record names).

Exit codes: 0 done, 2 refused (message on stderr; nothing was changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from autobot.config import BackendConfig, ConfigError, ServiceConfig, load_config

EXIT_REFUSED = 2
T = TypeVar("T")

_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="main-backend's config.yml (/etc/autobot/main-backend/config.yml on its machine).",
)


class Refused(Exception):
    """The command cannot do what was asked; the message says why."""


def _backend(config: ServiceConfig) -> BackendConfig:
    if config.backend is None:
        raise Refused(f"the config is {config.service_id}'s; `autobot sessions` needs main-backend's")
    return config.backend


@contextlib.asynccontextmanager
async def _stores(config_path: Path) -> AsyncIterator[Any]:
    """main-backend's stores as its config names them, opened for the command and closed after it."""
    # Imported here: `autobot --help` does not pay for Redis, SQLite and the chat modules.
    from autobot.chat.transcripts import TranscriptStore
    from autobot.redis_pool import create_redis
    from autobot.sessions.registry import SessionRegistry
    from autobot.sessions.stored import StoredSessions
    from autobot.storage import ConversationFileManager

    config = load_config(config_path)
    backend = _backend(config)
    redis = create_redis(config.redis)
    transcripts = TranscriptStore(backend.transcripts_dir)
    try:
        files = ConversationFileManager.from_config(backend)
        await files.initialize()
        yield StoredSessions(redis, SessionRegistry(redis, backend.transcripts_dir), transcripts, files)
    finally:
        await transcripts.aclose()
        await redis.aclose(close_connection_pool=True)


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the command's coroutine; every expected failure is one line on stderr and exit 2."""
    from autobot.chat.entries import InvalidSessionIdError
    from autobot.sessions import SessionAlreadyOwnedError, SessionStoreUnavailableError
    from autobot.sessions.stored import UnknownSessionError
    from autobot.storage import StorageError

    try:
        return asyncio.run(work())
    except (
        ConfigError,
        Refused,
        InvalidSessionIdError,
        SessionAlreadyOwnedError,
        SessionStoreUnavailableError,
        UnknownSessionError,
        StorageError,
    ) as exc:
        click.echo(f"autobot sessions: {exc}", err=True)
        raise SystemExit(EXIT_REFUSED) from None


def _short_owner(owner: str | None) -> str:
    return "-" if owner is None else f"{owner[:10]}…"


@click.group()
def sessions() -> None:
    """List, export and adopt the conversations main-backend stores (legacy ones included)."""


@sessions.command("list")
@_CONFIG_OPTION
@click.option(
    "--status",
    "wanted",
    type=click.Choice(["owned", "recorded", "legacy"]),
    default=None,
    help="Only sessions with this status.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def list_sessions(config_path: Path, wanted: str | None, as_json: bool) -> None:
    """Every session id any store holds: registry, durable records, transcripts, Redis history, files."""

    async def work() -> list[Any]:
        async with _stores(config_path) as stored:
            found: list[Any] = await stored.overview()
            return found

    rows = [s for s in _run(work) if wanted is None or s.status == wanted]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.to_dict(), ensure_ascii=False))
        return
    click.echo(
        f"{'SESSION':<34} {'STATUS':<9} {'OWNER':<12} {'TRANSCRIPT':<10} {'REDIS':<5} {'FILES':>5}  TITLE"
    )
    for row in rows:
        owner = row.owner or row.recorded_owner
        click.echo(
            f"{row.session_id:<34} {row.status:<9} {_short_owner(owner):<12} "
            f"{'yes' if row.transcript else 'no':<10} {'yes' if row.redis_history else 'no':<5} "
            f"{row.files:>5}  {row.title or ''}"
        )
    counts = {
        status: sum(1 for r in rows if r.status == status) for status in ("owned", "recorded", "legacy")
    }
    click.echo(", ".join(f"{n} {status}" for status, n in counts.items()), err=True)


@sessions.command("export")
@click.argument("session_id")
@_CONFIG_OPTION
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the JSON here (mode 0600) instead of standard output.",
)
def export(session_id: str, config_path: Path, output: Path | None) -> None:
    """SESSION_ID as JSON: status, owner key, messages (the whole transcript) and file records."""

    async def work() -> dict[str, Any]:
        async with _stores(config_path) as stored:
            exported: dict[str, Any] = (await stored.export(session_id)).to_dict()
            return exported

    text = json.dumps(_run(work), ensure_ascii=False, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    # A conversation is private: the export gets the transcripts' mode, not the umask's.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"{output}: session {session_id} exported", err=True)


@sessions.command("adopt")
@click.argument("session_id")
@_CONFIG_OPTION
@click.option("--user", "user_name", default=None, help="The user name a login in front of nginx sets.")
@click.option(
    "--cookie-stdin",
    is_flag=True,
    help="Read an anonymous browser's autobot_client cookie value from standard input.",
)
@click.option("--recorded", is_flag=True, help="The owner the session's durable record names.")
def adopt(
    session_id: str, config_path: Path, user_name: str | None, cookie_stdin: bool, recorded: bool
) -> None:
    """Give the stored session SESSION_ID to an identity; its data stays as it is."""
    from autobot.sessions import ids

    if [user_name is not None, cookie_stdin, recorded].count(True) != 1:
        click.echo("autobot sessions adopt: give exactly one of --user, --cookie-stdin, --recorded", err=True)
        raise SystemExit(EXIT_REFUSED)
    owner: str | None = None
    if user_name is not None:
        name = user_name.encode("utf-8")
        if not ids.valid_user_name(name):
            click.echo("autobot sessions adopt: --user is not a user name (1-256 bytes, printable)", err=True)
            raise SystemExit(EXIT_REFUSED)
        owner = ids.user_owner(name)
    elif cookie_stdin:
        token = sys.stdin.readline().strip()
        if not ids.is_client_token(token):
            click.echo(
                "autobot sessions adopt: standard input is not an autobot_client cookie value", err=True
            )
            raise SystemExit(EXIT_REFUSED)
        owner = ids.client_owner(token)

    async def work() -> Any:
        async with _stores(config_path) as stored:
            _check_service_user(stored.registry.records_dir.parent)
            await stored.registry.initialize()
            target = owner
            if target is None:
                record = await stored.registry.read_record(session_id)
                if record is None:
                    raise Refused(
                        f"session {session_id} has no durable record here: use --user or --cookie-stdin"
                    )
                target = record.owner
            return await stored.adopt(session_id, target)

    adopted = _run(work)
    click.echo(f"session {adopted.session_id}: owned by {_short_owner(adopted.owner)}")


def _check_service_user(transcripts_dir: Path) -> None:
    """Files this command writes must belong to the service: refuse to run as anyone else (root included)."""
    try:
        owner_uid = transcripts_dir.stat().st_uid
    except OSError as exc:
        raise Refused(f"cannot read {transcripts_dir}: {exc.strerror or exc}") from exc
    if os.geteuid() != owner_uid:
        raise Refused(
            f"run this as the user that owns {transcripts_dir} (uid {owner_uid}), e.g. sudo -u autobot-svc, "
            "so the session record it writes stays readable by main-backend"
        )
