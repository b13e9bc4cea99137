"""Every conversation main-backend stores, registered or not: what `autobot sessions` lists, exports, adopts.

Before issue 15 a client named its own session, and a conversation lived in up to three places under that
name: the transcript (`<transcripts_dir>/<id>.json`, the full record), the Redis history
(`chat:history:<id>`, the recent window, expiring) and file rows in SQLite (`conversation_files.session_id`).
None of them says whose it is. Those sessions are "legacy": kept, readable here, and reachable by a user
again once an operator adopts them to that user's identity. Nothing here deletes or rewrites stored data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from autobot.chat.entries import ChatEntry, CorruptEntryError, InvalidSessionIdError, validate_session_id
from autobot.chat.history import HISTORY_KEY_PREFIX, history_key
from autobot.chat.transcripts import TranscriptStore
from autobot.sessions.registry import SessionRegistry, SessionStoreUnavailableError, title_from
from autobot.storage import ConversationFileManager

Status = Literal["owned", "recorded", "legacy"]


class UnknownSessionError(LookupError):
    """No store holds anything under this session id."""


@dataclass(frozen=True, slots=True)
class StoredSession:
    """Where one session id has data, and whose it is (owner keys, never a cookie or a name)."""

    session_id: str
    owner: str | None = None  # the registry's owner
    recorded_owner: str | None = None  # the durable record's owner (see registry)
    transcript: bool = False
    redis_history: bool = False
    files: int = 0
    title: str | None = None
    message_count: int | None = None

    @property
    def status(self) -> Status:
        if self.owner is not None:
            return "owned"
        return "recorded" if self.recorded_owner is not None else "legacy"

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "owner": self.owner,
            "recorded_owner": self.recorded_owner,
            "transcript": self.transcript,
            "redis_history": self.redis_history,
            "files": self.files,
            "title": self.title,
            "message_count": self.message_count,
        }


@dataclass(frozen=True, slots=True)
class SessionExport:
    session: StoredSession
    messages: list[ChatEntry]
    messages_from: Literal["transcript", "redis", "none"]
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.session.to_dict(),
            "messages_from": self.messages_from,
            "messages": [m.to_dict() for m in self.messages],
            "files": self.files,
        }


def _valid_ids(names: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for name in names:
        try:
            found.add(validate_session_id(name))
        except InvalidSessionIdError:
            continue  # not a session's file or key (a corrupt transcript set aside, a temp file)
    return found


class StoredSessions:
    """The stores main-backend's config names, read together."""

    def __init__(
        self,
        redis: Redis,
        registry: SessionRegistry,
        transcripts: TranscriptStore,
        files: ConversationFileManager,
    ) -> None:
        self._redis = redis
        self.registry = registry
        self.transcripts = transcripts
        self.files = files

    def transcript_ids(self) -> set[str]:
        # The file name rules are TranscriptStore's (append-only records, and the older whole-file format):
        # ask it for a probe's paths rather than repeat the suffixes.
        directory = self.transcripts.directory
        if not directory.is_dir():
            return set()
        found: set[str] = set()
        for probe in (self.transcripts.path_for("probe"), self.transcripts.legacy_path_for("probe")):
            suffix = probe.name.removeprefix("probe")
            names = (p.name.removesuffix(suffix) for p in directory.glob(f"*{suffix}") if p.is_file())
            found |= _valid_ids(names)
        return found

    def has_transcript(self, session_id: str) -> bool:
        return any(
            p.is_file()
            for p in (self.transcripts.path_for(session_id), self.transcripts.legacy_path_for(session_id))
        )

    async def redis_history_ids(self) -> set[str]:
        names: list[str] = []
        try:
            async for raw in self._redis.scan_iter(match=HISTORY_KEY_PREFIX + "*", count=500):
                names.append(raw.decode("utf-8").removeprefix(HISTORY_KEY_PREFIX))
        except RedisError as exc:
            raise SessionStoreUnavailableError(f"cannot scan the chat history in Redis: {exc}") from exc
        return _valid_ids(names)

    async def overview(self) -> list[StoredSession]:
        """Every session id found in any store, sorted by id."""
        registered = set(await self.registry.registered_ids())
        recorded = set(self.registry.recorded_ids())
        transcripts = self.transcript_ids()
        in_redis = await self.redis_history_ids()
        with_files = _valid_ids(await self.files.session_ids())
        every = registered | recorded | transcripts | in_redis | with_files
        return [
            await self._describe(
                sid,
                transcript=sid in transcripts,
                redis_history=sid in in_redis,
                with_files=sid in with_files,
                recorded=sid in recorded,
            )
            for sid in sorted(every)
        ]

    async def find(self, session_id: str) -> StoredSession:
        """One session's overview; UnknownSessionError if no store has anything under the id."""
        validate_session_id(session_id)
        try:
            in_redis = bool(await self._redis.exists(history_key(session_id)))
        except RedisError as exc:
            raise SessionStoreUnavailableError(f"cannot read the chat history in Redis: {exc}") from exc
        found = await self._describe(
            session_id,
            transcript=self.has_transcript(session_id),
            redis_history=in_redis,
            with_files=True,
            recorded=True,
        )
        nothing = (found.owner, found.recorded_owner) == (None, None) and not (
            found.transcript or found.redis_history or found.files
        )
        if nothing:
            raise UnknownSessionError(f"no store holds a session {session_id!r}")
        return found

    async def export(self, session_id: str) -> SessionExport:
        """All that is stored under the id: the transcript (else the Redis window) and the file records."""
        session = await self.find(session_id)
        messages, source = await self._messages(session)
        records = await self.files.list_files(session_id, include_deleted=True)
        files = [
            {
                **r.to_dict(),
                "stored_filename": r.stored_filename,
                "content_path": str(self.files.files_dir / r.stored_filename),
            }
            for r in records
        ]
        return SessionExport(session=session, messages=messages, messages_from=source, files=files)

    async def adopt(self, session_id: str, owner: str) -> StoredSession:
        """Register a stored session to `owner` (an owner key), keeping its data as it is."""
        session = await self.find(session_id)
        messages, _ = await self._messages(session)
        first_user = next((m.content for m in messages if m.role == "user"), None)
        created_at = messages[0].ts if messages else None
        if created_at is None:
            record = await self.registry.read_record(session_id)
            created_at = record.created_at if record is not None else ""
        await self.registry.adopt(
            session_id,
            owner,
            created_at=created_at,
            title=title_from(first_user) if first_user is not None else None,
            message_count=len(messages),
        )
        return await self.find(session_id)

    # -- reading ------------------------------------------------------------------------------------------

    async def _describe(
        self, session_id: str, *, transcript: bool, redis_history: bool, with_files: bool, recorded: bool
    ) -> StoredSession:
        info = await self.registry.get(session_id)
        record = await self.registry.read_record(session_id) if recorded else None
        files = len(await self.files.list_files(session_id, include_deleted=True)) if with_files else 0
        return StoredSession(
            session_id=session_id,
            owner=info.owner if info is not None else None,
            recorded_owner=record.owner if record is not None else None,
            transcript=transcript,
            redis_history=redis_history,
            files=files,
            title=info.title if info is not None else None,
            message_count=info.message_count if info is not None else None,
        )

    async def _messages(
        self, session: StoredSession
    ) -> tuple[list[ChatEntry], Literal["transcript", "redis", "none"]]:
        if session.transcript:
            stored = await self.transcripts.load(session.session_id)
            if stored:
                return [record.entry for record in stored], "transcript"
        if session.redis_history:
            try:
                raw = await self._redis.lrange(history_key(session.session_id), 0, -1)
            except RedisError as exc:
                raise SessionStoreUnavailableError(f"cannot read the chat history in Redis: {exc}") from exc
            entries: list[ChatEntry] = []
            for item in raw:
                try:
                    entries.append(ChatEntry.from_json(item))
                except CorruptEntryError:
                    continue
            return entries, "redis"
        return [], "none"
