"""The session registry: which sessions main-backend issued, and whose each one is.

Redis is the registry every main-backend process and machine shares (nginx spreads users over all of them),
under main-backend's own `chat:` prefix (`sessions:*` is browser-service's too, so it would let that service
hand itself sessions):
- `chat:session:<id>`: a hash with `owner` (an owner key, see `ids`), `created_at`, `updated_at`,
  `message_count` and, after the first message, `title`;
- `chat:owner:<owner key>`: a sorted set of the owner's session ids, scored by last activity (ms);
- `chat:deleted:<id>`: a deleted session's tombstone (see `owner_of`).
The Redis server keeps an append-only file (role redis), so the registry survives restarts.

Beside the transcripts, each session also has a small durable record, `<transcripts_dir>/sessions/<id>.json`
({session_id, owner, created_at}, written at creation, removed at deletion), the way the transcripts are the
durable copy of the chat history. Requests read it only while Redis cannot answer (`owner_of`); an operator
restores ownership from it (`autobot sessions adopt --recorded`) if Redis ever loses its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from autobot.atomic_file import write_atomic
from autobot.chat.entries import utc_now_iso, validate_session_id
from autobot.sessions import ids

log = logging.getLogger(__name__)

SESSION_KEY_PREFIX = "chat:session:"
OWNER_KEY_PREFIX = "chat:owner:"
TOMBSTONE_KEY_PREFIX = "chat:deleted:"
# A deleted session's tombstone outlives any cookie that could own it (browsers keep one at most 400 days).
TOMBSTONE_TTL_S = 400 * 24 * 3600
RECORDS_SUBDIR = "sessions"
RECORD_MODE = 0o600  # whose a conversation is: the service user only
TITLE_MAX_CHARS = 80
# Creating a session retries on an id collision (with 160 random bits this is defence, not expectation).
_CREATE_ATTEMPTS = 3


class SessionStoreUnavailableError(Exception):
    """Redis (or the records directory) cannot answer: the request is refused with 503, nothing is assumed."""


class SessionNotFoundError(LookupError):
    """No session of this id was issued to this caller (or none at all: the two are never told apart)."""


class SessionAlreadyOwnedError(Exception):
    """`adopt` was asked to give a session that already belongs to another identity."""


def session_key(session_id: str) -> str:
    return SESSION_KEY_PREFIX + validate_session_id(session_id)


def tombstone_key(session_id: str) -> str:
    return TOMBSTONE_KEY_PREFIX + validate_session_id(session_id)


def owner_key(owner: str) -> str:
    if not ids.is_owner_key(owner):
        raise ValueError("not an owner key")
    return OWNER_KEY_PREFIX + owner


def title_from(message: str) -> str:
    """The title a session gets from its first user message: one line, at most TITLE_MAX_CHARS."""
    line = " ".join(message.split())
    return line if len(line) <= TITLE_MAX_CHARS else line[: TITLE_MAX_CHARS - 1].rstrip() + "…"


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the services' clients do not decode replies; the tests' may)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _score(now_s: float) -> int:
    return int(now_s * 1000)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    owner: str
    created_at: str
    updated_at: str
    title: str | None
    message_count: int

    def to_dict(self) -> dict[str, Any]:
        """As the user API shows it: never the owner key."""
        return {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "title": self.title,
            "message_count": self.message_count,
        }

    @classmethod
    def from_hash(cls, session_id: str, raw: Mapping[Any, Any]) -> SessionInfo | None:
        """None for a hash that is not a complete session (a claim being created, or nothing)."""
        fields = {_text(k): _text(v) for k, v in raw.items()}
        owner, created = fields.get("owner"), fields.get("created_at")
        if owner is None or created is None:
            return None
        count = fields.get("message_count", "0")
        return cls(
            session_id=session_id,
            owner=owner,
            created_at=created,
            updated_at=fields.get("updated_at", created),
            title=fields.get("title"),
            message_count=int(count) if count.isdigit() else 0,
        )


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """The durable record of one session's owner (see the module docstring)."""

    session_id: str
    owner: str
    created_at: str

    def to_json(self) -> bytes:
        data = {"session_id": self.session_id, "owner": self.owner, "created_at": self.created_at}
        return json.dumps(data, separators=(",", ":")).encode("ascii") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, session_id: str) -> SessionRecord:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("session_id") != session_id:
            raise ValueError(f"not the record of session {ids.short_id(session_id)}")
        owner, created = data.get("owner"), data.get("created_at")
        if not isinstance(owner, str) or not ids.is_owner_key(owner) or not isinstance(created, str):
            raise ValueError("record without a valid owner and created_at")
        return cls(session_id, owner, created)


@contextlib.asynccontextmanager
async def _unavailable(action: str) -> AsyncIterator[None]:
    try:
        yield
    except RedisError as exc:
        raise SessionStoreUnavailableError(
            f"the session registry (Redis) is unavailable while {action}: {type(exc).__name__}: {exc}"
        ) from exc
    except OSError as exc:
        raise SessionStoreUnavailableError(
            f"the session records directory is unavailable while {action}: {exc.strerror or exc}"
        ) from exc


class SessionRegistry:
    def __init__(self, redis: Redis, transcripts_dir: Path) -> None:
        self._redis = redis
        self.records_dir = Path(transcripts_dir) / RECORDS_SUBDIR

    async def initialize(self) -> None:
        async with _unavailable("creating the records directory"):
            await asyncio.to_thread(self.records_dir.mkdir, mode=0o750, parents=True, exist_ok=True)

    # -- the request path --------------------------------------------------------------------------------

    async def create(self, owner: str) -> SessionInfo:
        """Issue a new session to `owner`: a fresh id, claimed in Redis, recorded on disk, listed."""
        owner_key(owner)  # refuses a malformed owner before anything is written
        async with _unavailable("creating a session"):
            for _ in range(_CREATE_ATTEMPTS):
                session_id = ids.new_session_id()
                if await self._redis.hsetnx(session_key(session_id), "owner", owner):
                    break
            else:
                raise SessionStoreUnavailableError("could not find an unused session id")
            record = SessionRecord(session_id, owner, utc_now_iso())
            try:
                await self._write_record(record)
            except OSError:
                await self._redis.delete(session_key(session_id))
                raise
            await self._fill(record, title=None, message_count=0)
        return SessionInfo(session_id, owner, record.created_at, record.created_at, None, 0)

    async def owner_of(self, session_id: str) -> str | None:
        """The session's owner key, or None if main-backend never issued it (or it was deleted).

        The durable record on this machine answers when Redis cannot: while Redis is unreachable, a user
        keeps writing into their session (the transcript takes the message, the chat path reports the history
        outage) instead of being refused for the registry's outage; and after Redis lost its data, the entry
        is restored from the record, as the chat history is refilled from the transcript. A deleted session
        leaves a tombstone in Redis, so a record another machine still holds cannot bring it back.
        Without either the answer is unknown: 503, never a 404 that might be wrong.
        """
        key = session_key(session_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(key, "owner")
                pipe.exists(tombstone_key(session_id))
                raw, deleted = await pipe.execute()
        except RedisError as exc:
            record = await self.read_record(session_id)
            if record is None:
                raise SessionStoreUnavailableError(
                    f"the session registry (Redis) is unavailable while looking up a session: {exc}"
                ) from exc
            log.warning("session registry unavailable (%s); owner read from the durable record", exc)
            return record.owner
        if raw is not None:
            return _text(raw)
        if deleted:
            return None
        record = await self.read_record(session_id)
        if record is None:
            return None
        async with _unavailable("restoring a session"):
            if not await self._redis.hsetnx(key, "owner", record.owner):
                return await self.owner_of(session_id)  # restored by a concurrent request meanwhile
            await self._fill(record, title=None, message_count=0)
        log.warning(
            "session %s: restored into the registry from its durable record", ids.short_id(session_id)
        )
        return record.owner

    async def get(self, session_id: str) -> SessionInfo | None:
        async with _unavailable("reading a session"):
            raw = await self._redis.hgetall(session_key(session_id))
        return SessionInfo.from_hash(session_id, raw)

    async def list_owned(self, owner: str) -> list[SessionInfo]:
        """The owner's sessions, most recently active first."""
        okey = owner_key(owner)
        async with _unavailable("listing sessions"):
            members = await self._redis.zrevrange(okey, 0, -1)
            session_ids = [_text(m) for m in members if isinstance(m, bytes | str)]
            if not session_ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    pipe.hgetall(session_key(session_id))
                hashes = await pipe.execute()
        infos = [SessionInfo.from_hash(sid, raw) for sid, raw in zip(session_ids, hashes, strict=True)]
        return [info for info in infos if info is not None and info.owner == owner]

    async def touch(self, owner: str, session_id: str, *, message: str, added: int) -> None:
        """Count a completed turn: `added` messages, the title from the first one, the activity time.

        One transaction that also reads the owner as it was just before the writes. The route checked the
        owner when the turn began, and owners never change; but the session may have been deleted while the
        model answered. Then the writes made a fragment, which is taken back at once (a fragment without an
        owner is never listed or accepted meanwhile): a late turn brings nothing of a deleted session back.
        """
        key, okey = session_key(session_id), owner_key(owner)
        async with _unavailable("updating a session"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(key, "owner")
                pipe.hsetnx(key, "title", title_from(message))
                pipe.hincrby(key, "message_count", added)
                pipe.hset(key, "updated_at", utc_now_iso())
                pipe.zadd(okey, {session_id: _score(time.time())})
                current, *_ = await pipe.execute()
            if current is not None and _text(current) == owner:
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                if current is None:
                    pipe.delete(key)
                pipe.zrem(okey, session_id)
                await pipe.execute()
        if current is not None:
            log.error(
                "session %s: a turn was counted for an identity that does not own it",
                ids.short_id(session_id),
            )

    async def remove(self, owner: str, session_id: str) -> None:
        """Forget the session: its durable record first, then Redis (a crash in between leaves it listed, and
        deleting it again finishes the job), leaving a tombstone so no other machine's record restores it."""
        async with _unavailable("removing a session"):
            await asyncio.to_thread(self._unlink_record, session_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(session_key(session_id))
                pipe.zrem(owner_key(owner), session_id)
                pipe.set(tombstone_key(session_id), utc_now_iso(), ex=TOMBSTONE_TTL_S)
                await pipe.execute()

    # -- the operator's side (autobot sessions) -----------------------------------------------------------

    async def adopt(
        self, session_id: str, owner: str, *, created_at: str, title: str | None, message_count: int
    ) -> SessionInfo:
        """Give a stored session (legacy, or only recorded on disk) to `owner`, and record that durably.

        Idempotent for the same owner (fields already there are kept); SessionAlreadyOwnedError, with
        nothing changed, if another identity owns it.
        """
        owner_key(owner)
        key = session_key(session_id)
        async with _unavailable("adopting a session"):
            if not await self._redis.hsetnx(key, "owner", owner):
                current = await self._redis.hget(key, "owner")
                if current is None or _text(current) != owner:
                    raise SessionAlreadyOwnedError(f"session {session_id} is owned by another identity")
            existing = await self.get(session_id)
            record = SessionRecord(session_id, owner, existing.created_at if existing else created_at)
            await self._write_record(record)
            await self._fill(record, title=title, message_count=message_count)
            await self._redis.delete(tombstone_key(session_id))
        info = await self.get(session_id)
        assert info is not None  # claimed and filled just above
        return info

    async def registered_ids(self) -> list[str]:
        """Every session id the registry holds (SCAN, not KEYS: the ACL refuses dangerous commands)."""
        found: list[str] = []
        async with _unavailable("scanning the registry"):
            async for raw in self._redis.scan_iter(match=SESSION_KEY_PREFIX + "*", count=500):
                found.append(_text(raw).removeprefix(SESSION_KEY_PREFIX))
        return sorted(found)

    async def read_record(self, session_id: str) -> SessionRecord | None:
        path = self._record_path(session_id)
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SessionStoreUnavailableError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            return SessionRecord.from_json(raw, session_id)
        except ValueError as exc:
            log.error("session record %s is not valid (%s); ignored", path, exc)
            return None

    def recorded_ids(self) -> list[str]:
        if not self.records_dir.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in self.records_dir.glob("*.json"))

    # -- shared steps -------------------------------------------------------------------------------------

    async def _fill(self, record: SessionRecord, *, title: str | None, message_count: int) -> None:
        """Complete a claimed entry (only the fields it lacks: a re-run changes nothing) and list it."""
        key = session_key(record.session_id)
        fields = {
            "created_at": record.created_at,
            "updated_at": record.created_at,
            "message_count": str(message_count),
        }
        if title is not None:
            fields["title"] = title
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, value in fields.items():
                pipe.hsetnx(key, name, value)
            pipe.zadd(owner_key(record.owner), {record.session_id: _score(time.time())})
            await pipe.execute()

    # -- disk ---------------------------------------------------------------------------------------------

    def _record_path(self, session_id: str) -> Path:
        return self.records_dir / f"{validate_session_id(session_id)}.json"

    async def _write_record(self, record: SessionRecord) -> None:
        path = self._record_path(record.session_id)
        await asyncio.to_thread(write_atomic, path, record.to_json(), RECORD_MODE)

    def _unlink_record(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._record_path(session_id))
