"""Chat history in Redis over redis.asyncio: one list per session, bounded, read by window.

Layout (all keys under `chat:`, the prefix main-backend's ACL user owns):
- `chat:history:<session_id>`: a list of JSON entries {id, role, content, ts}, oldest first.
- `chat:meta:<session_id>`: a hash with `seq` (messages ever appended: the newest entry's 1-based sequence
  number, which pagination cursors refer to) and `model` (the model the session last chatted with).

Appends are RPUSH + LTRIM + HINCRBY + EXPIRE in one MULTI transaction, so concurrent appends never lose a
message (a GET/SET blob lost all but a handful of 200 in field tests) and the list never outgrows its cap.
Window reads are `LRANGE key -N -1`: they cost the window, not the history.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from autobot.chat.entries import ChatEntry, CorruptEntryError, validate_session_id

log = logging.getLogger(__name__)

HISTORY_KEY_PREFIX = "chat:history:"
META_KEY_PREFIX = "chat:meta:"
# A page read is two round trips; if appends keep landing in between, give up after this many tries.
_PAGE_READ_ATTEMPTS = 8


class HistoryUnavailableError(Exception):
    """Redis could not be reached or refused the command; the chat path maps this to 503."""


def history_key(session_id: str) -> str:
    return HISTORY_KEY_PREFIX + validate_session_id(session_id)


def meta_key(session_id: str) -> str:
    return META_KEY_PREFIX + validate_session_id(session_id)


@dataclass(frozen=True, slots=True)
class AppendResult:
    # The list was empty before this append: its history expired or was lost.
    missed: bool
    # The newest entries right after the append, oldest first (empty unless a window was asked for).
    window: list[ChatEntry]


@dataclass(frozen=True, slots=True)
class StoredEntry:
    entry: ChatEntry
    # 1-based position in the session's whole history (not only what Redis still holds).
    seq: int

    def to_dict(self) -> dict[str, str | int]:
        return {**self.entry.to_dict(), "seq": self.seq}


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[StoredEntry]
    # Messages ever appended to the session, and how many Redis still holds.
    total: int
    retained: int

    @property
    def next_before(self) -> int | None:
        """Cursor for the next older page, or None when Redis holds nothing older."""
        if not self.entries:
            return None
        oldest = self.entries[0].seq
        oldest_retained = self.total - self.retained + 1
        return oldest if oldest > oldest_retained else None


def page_bounds(total: int, retained: int, limit: int, before: int | None) -> tuple[int, int] | None:
    """Sequence range [first, last] of the page ending just before `before` (or at the newest message).

    Pure so the arithmetic is testable on its own; None means the page is empty.
    """
    oldest = total - retained + 1
    last = total if before is None else min(before - 1, total)
    first = max(last - limit + 1, oldest)
    if last < first:
        return None
    return first, last


def _decode_entries(raw: Sequence[bytes | str], key: str) -> list[ChatEntry]:
    entries: list[ChatEntry] = []
    for item in raw:
        try:
            entries.append(ChatEntry.from_json(item))
        except CorruptEntryError as exc:
            # One bad element must not make the whole conversation unreadable; say so loudly instead.
            log.warning("skipping corrupt chat entry in %s: %s", key, exc)
    return entries


@contextlib.asynccontextmanager
async def _redis_errors(action: str, session_id: str) -> AsyncIterator[None]:
    try:
        yield
    except RedisError as exc:
        raise HistoryUnavailableError(
            f"chat history store (Redis) unavailable while {action} for session {session_id!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


class RedisChatHistory:
    def __init__(self, redis: Redis, *, max_messages: int, ttl_s: int) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 second, got {ttl_s}")
        self._redis = redis
        self.max_messages = max_messages
        self.ttl_s = ttl_s

    async def append(
        self, session_id: str, entries: Sequence[ChatEntry], *, model: str | None = None, window: int = 0
    ) -> AppendResult:
        """Append entries atomically and, in the same transaction, read the newest `window` entries.

        Reading in the append's transaction saves a round trip per turn and sees exactly the list as it is
        right after this append. `missed` tells the caller the list was empty before (expired or lost), so
        older messages should come back from the transcript (see `prepend`).
        """
        if not entries:
            raise ValueError("append needs at least one entry")
        key, meta = history_key(session_id), meta_key(session_id)
        async with _redis_errors("appending", session_id), self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(e.to_json() for e in entries))
            pipe.ltrim(key, -self.max_messages, -1)
            pipe.hincrby(meta, "seq", len(entries))
            if model is not None:
                pipe.hset(meta, "model", model)
            pipe.expire(key, self.ttl_s)
            pipe.expire(meta, self.ttl_s)
            if window > 0:
                pipe.lrange(key, -window, -1)
            results = await pipe.execute()
        read = _decode_entries(results[-1], key) if window > 0 else []
        return AppendResult(missed=int(results[0]) == len(entries), window=read)

    async def prepend(self, session_id: str, older: Sequence[ChatEntry], *, total: int) -> None:
        """Put older entries (oldest first) in front of what the list holds, and set the message count.

        Used after a miss: the newest entries were just appended, the rest come back from the transcript.
        LPUSH of the reversed batch keeps the order without touching anything appended meanwhile.
        """
        key, meta = history_key(session_id), meta_key(session_id)
        batch = list(older)[-self.max_messages :]
        async with _redis_errors("reloading", session_id), self._redis.pipeline(transaction=True) as pipe:
            if batch:
                pipe.lpush(key, *(e.to_json() for e in reversed(batch)))
                pipe.ltrim(key, -self.max_messages, -1)
            pipe.hset(meta, "seq", total)
            pipe.expire(key, self.ttl_s)
            pipe.expire(meta, self.ttl_s)
            await pipe.execute()

    async def window(self, session_id: str, count: int) -> list[ChatEntry]:
        """The newest `count` entries, oldest first: one LRANGE -count -1."""
        if count < 1:
            return []
        key = history_key(session_id)
        async with _redis_errors("reading", session_id):
            raw = await self._redis.lrange(key, -count, -1)
        return _decode_entries(raw, key)

    async def delete(self, session_id: str) -> None:
        """Remove the session's list and its meta hash (a deleted session, issue 15)."""
        async with _redis_errors("deleting", session_id):
            await self._redis.delete(history_key(session_id), meta_key(session_id))

    async def session_model(self, session_id: str) -> str | None:
        async with _redis_errors("reading", session_id):
            raw = await self._redis.hget(meta_key(session_id), "model")
        return raw.decode("utf-8") if isinstance(raw, bytes) else raw

    async def page(self, session_id: str, *, limit: int, before: int | None = None) -> HistoryPage:
        """Up to `limit` entries older than sequence number `before` (or the newest), oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if before is not None and before < 1:
            raise ValueError(f"before must be a sequence number >= 1, got {before}")
        key, meta = history_key(session_id), meta_key(session_id)
        async with _redis_errors("reading", session_id):
            if before is None:
                # Relative to the end, so one transaction gives a consistent snapshot.
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hget(meta, "seq")
                    pipe.llen(key)
                    pipe.lrange(key, -limit, -1)
                    raw_seq, length, raw = await pipe.execute()
                total = max(int(raw_seq or 0), int(length))
                return self._page(key, total, int(length), raw, last_seq=total)
            for _ in range(_PAGE_READ_ATTEMPTS):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hget(meta, "seq")
                    pipe.llen(key)
                    raw_seq, length = await pipe.execute()
                total = max(int(raw_seq or 0), int(length))
                bounds = page_bounds(total, int(length), limit, before)
                if bounds is None:
                    return HistoryPage(entries=[], total=total, retained=int(length))
                first, last = bounds
                # Negative indexes: sequence number `total` is index -1.
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hget(meta, "seq")
                    pipe.llen(key)
                    pipe.lrange(key, first - total - 1, last - total - 1)
                    raw_seq2, length2, raw = await pipe.execute()
                if max(int(raw_seq2 or 0), int(length2)) == total:
                    return self._page(key, total, int(length2), raw, last_seq=last)
        raise HistoryUnavailableError(
            f"chat history of session {session_id!r} changed during {_PAGE_READ_ATTEMPTS} page reads; retry"
        )

    @staticmethod
    def _page(
        key: str, total: int, retained: int, raw: Sequence[bytes | str], *, last_seq: int
    ) -> HistoryPage:
        # Sequence numbers come from positions in the snapshot; a skipped corrupt element keeps its number.
        first_seq = last_seq - len(raw) + 1
        stored: list[StoredEntry] = []
        for offset, item in enumerate(raw):
            decoded = _decode_entries([item], key)
            if decoded:
                stored.append(StoredEntry(entry=decoded[0], seq=first_seq + offset))
        return HistoryPage(entries=stored, total=total, retained=retained)
