"""Chat history in Redis over redis.asyncio: one list per session, bounded, read by window.

Layout (all keys under `chat:`, the prefix main-backend's ACL user owns):
- `chat:history:<session_id>`: a list of JSON entries {id, role, content, ts}, oldest first: the newest
  `max_messages` messages of the session.
- `chat:meta:<session_id>`: a hash with `seq` (the newest entry's sequence number in the transcript, which
  pagination cursors refer to) and `model` (the model the session last chatted with).

Redis is a copy: the transcript is the record, and Redis holds the newest part of it for cheap window reads.
Every append says which sequence numbers its entries got in the transcript, and reads, in the same MULTI
transaction, what Redis held before; if that was not exactly the transcript up to just before them (a
write that failed, an expired or flushed key), the caller rebuilds the list from the transcript (`replace`).
Appends are RPUSH + LTRIM + HSET + EXPIRE in one transaction, so concurrent appends never lose a message and
the list never outgrows its cap. Window reads are `LRANGE key -N -1`: they cost the window, not the history.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from autobot.chat.entries import ChatEntry, CorruptEntryError, StoredEntry, validate_session_id
from autobot.redis_pool import is_pool_exhausted

__all__ = [
    "AppendResult",
    "HistoryBusyError",
    "HistoryPage",
    "HistoryUnavailableError",
    "RedisChatHistory",
    "StoredEntry",
    "history_key",
    "meta_key",
    "page_bounds",
]

log = logging.getLogger(__name__)

HISTORY_KEY_PREFIX = "chat:history:"
META_KEY_PREFIX = "chat:meta:"
# A page read is two round trips; if appends keep landing in between, give up after this many tries.
_PAGE_READ_ATTEMPTS = 8


class HistoryUnavailableError(Exception):
    """Redis could not be reached or refused the command; the chat path maps this to 503."""


class HistoryBusyError(HistoryUnavailableError):
    """Redis is up but every pooled connection stayed in use for the pool's whole wait: busy, not down."""


def history_key(session_id: str) -> str:
    return HISTORY_KEY_PREFIX + validate_session_id(session_id)


def meta_key(session_id: str) -> str:
    return META_KEY_PREFIX + validate_session_id(session_id)


@dataclass(frozen=True, slots=True)
class AppendResult:
    # Before this append Redis did not hold exactly the transcript up to the entry before these (a failed
    # write, an expired or flushed key): the list must be rebuilt from the transcript.
    diverged: bool
    # The newest entries right after the append, oldest first (empty unless a window was asked for).
    window: list[ChatEntry]
    # The message count Redis held before the append. More than this machine's transcript had: another
    # main-backend served the session, and Redis, not this transcript, holds its recent history.
    held_total: int = 0


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[StoredEntry]
    # Messages in the session's whole history, and how many of the newest Redis holds.
    total: int
    retained: int

    @property
    def oldest_retained(self) -> int:
        """The sequence number of the oldest message Redis holds (total + 1 when it holds none)."""
        return self.total - self.retained + 1

    @property
    def next_before(self) -> int | None:
        """Cursor for the next older page, or None when this page starts at the first message."""
        if not self.entries or self.entries[0].seq <= 1:
            return None
        return self.entries[0].seq


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
        if is_pool_exhausted(exc):
            raise HistoryBusyError(
                f"chat history store (Redis) busy while {action} for session {session_id!r}: "
                "no pooled connection became free in time"
            ) from exc
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

    def holds(self, total: int) -> int:
        """How many entries the list holds when it is in step with a transcript of `total` messages."""
        return min(total, self.max_messages)

    async def append(
        self,
        session_id: str,
        entries: Sequence[ChatEntry],
        *,
        last_seq: int,
        model: str | None = None,
        window: int = 0,
    ) -> AppendResult:
        """Append entries, whose sequence numbers in the transcript end at `last_seq`, atomically; in the
        same transaction read what the list held before (to tell whether it was in step with the transcript)
        and, if asked, the newest `window` entries after the append: one round trip per turn.
        """
        if not entries:
            raise ValueError("append needs at least one entry")
        previous = last_seq - len(entries)
        if previous < 0:
            raise ValueError(f"last_seq {last_seq} is smaller than the {len(entries)} entries appended")
        key, meta = history_key(session_id), meta_key(session_id)
        async with _redis_errors("appending", session_id), self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(meta, "seq")
            pipe.llen(key)
            pipe.rpush(key, *(e.to_json() for e in entries))
            pipe.ltrim(key, -self.max_messages, -1)
            pipe.hset(meta, "seq", last_seq)
            if model is not None:
                pipe.hset(meta, "model", model)
            pipe.expire(key, self.ttl_s)
            pipe.expire(meta, self.ttl_s)
            if window > 0:
                pipe.lrange(key, -window, -1)
            results = await pipe.execute()
        held_seq, held_length = int(results[0] or 0), int(results[1])
        diverged = held_seq != previous or held_length != self.holds(previous)
        read = _decode_entries(results[-1], key) if window > 0 else []
        return AppendResult(diverged=diverged, window=read, held_total=held_seq)

    async def set_total(self, session_id: str, total: int) -> None:
        """Record `total` as the session's message count (the list itself is left as it is)."""
        async with _redis_errors("counting", session_id):
            await self._redis.hset(meta_key(session_id), "seq", total)

    async def replace(self, session_id: str, newest: Sequence[ChatEntry], *, total: int) -> None:
        """Make the list the transcript's newest entries (oldest first) and `total` its message count: the
        repair after a divergence. The model the session chats with is kept."""
        key, meta = history_key(session_id), meta_key(session_id)
        batch = list(newest)[-self.max_messages :]
        async with _redis_errors("rebuilding", session_id), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if batch:
                pipe.rpush(key, *(e.to_json() for e in batch))
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
