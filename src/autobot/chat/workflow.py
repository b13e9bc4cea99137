"""ChatWorkflowManager: one chat turn, end to end, without blocking the event loop.

Order of a turn (the order is the point):
1. decide: the session id, a non-empty message, a known model (the default only when none is named), and a
   message that fits the model's window with the system prompt. A refused message stores nothing anywhere.
2. take a Redis slot (at most as many turns at work as the Redis pool has connections, each waiting a
   bounded time): none free in time is 503 "busy", still before anything is stored;
3. under the session's lock (this process and every other on the data directory), persist the message: the
   transcript first (the durable record, appended and fsynced), then Redis, which in the same MULTI reports
   whether it was in step with the transcript and returns the window's worth of history;
   if it was not (a write that failed earlier, an expired or flushed key), it is rebuilt from the transcript;
4. build the context window for the model (its registry budgets decide what is kept);
5. ask the LLM provider;
6. persist the reply the same way. Once the reply is in the transcript the turn has succeeded: if Redis
   cannot take it (busy or down), it is left behind and rebuilt by the next turn or read of the session.
The transcript is the truth and Redis converges to it. No message count is written here: every limit comes
from the model registry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis

from autobot.chat.entries import ChatEntry, StoredEntry, validate_session_id
from autobot.chat.history import (
    HistoryBusyError,
    HistoryPage,
    HistoryUnavailableError,
    RedisChatHistory,
    page_bounds,
)
from autobot.chat.locks import BoundedSlots
from autobot.chat.transcripts import AppendReceipt, SessionTranscript, TranscriptStore
from autobot.context import ContextWindowManager, ModelSpec, Window
from autobot.llm import LLMProvider

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SYSTEM_PROMPT = (
    "You are AutoBot, an assistant running on the user's own AutoBot cluster. Answer clearly and concisely."
)


class ChatUnavailableError(Exception):
    """The chat history store (Redis) is unavailable. `saved_ids` are the entries already safe in the
    transcript (the user's message, when it failed while persisting that)."""

    def __init__(self, session_id: str, saved_ids: Sequence[str], reason: str) -> None:
        self.session_id = session_id
        self.saved_ids = tuple(saved_ids)
        super().__init__(reason)


class ChatBusyError(ChatUnavailableError):
    """Redis is up but this service has as much Redis work in flight as its pool allows: retry after
    `retry_after_s`. Refused before anything was stored (`saved_ids` is empty then)."""

    def __init__(self, session_id: str, saved_ids: Sequence[str], reason: str, retry_after_s: int) -> None:
        super().__init__(session_id, saved_ids, reason)
        self.retry_after_s = retry_after_s


class EmptyMessageError(ValueError):
    """The message has no visible content."""


@dataclass(frozen=True, slots=True)
class ChatResult:
    session_id: str
    model: str
    reply: str
    message_id: str
    reply_id: str
    prompt_tokens: int
    max_output_tokens: int
    # History messages in the window (system prompt and the new message not counted) and those left out.
    history_used: int
    history_dropped: int
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "model": self.model,
            "reply": self.reply,
            "message_id": self.message_id,
            "reply_id": self.reply_id,
            "prompt_tokens": self.prompt_tokens,
            "max_output_tokens": self.max_output_tokens,
            "history_used": self.history_used,
            "history_dropped": self.history_dropped,
            "provider": self.provider,
        }


@dataclass(frozen=True, slots=True)
class MessagesView:
    """A page of a session's stored messages, as the messages endpoint returns it."""

    session_id: str
    model: str
    limit: int
    page: HistoryPage

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "model": self.model,
            "limit": self.limit,
            "total": self.page.total,
            "retained": self.page.retained,
            "next_before": self.page.next_before,
            "messages": [e.to_dict() for e in self.page.entries],
        }


@dataclass(frozen=True, slots=True)
class _Turn:
    session_id: str
    user: ChatEntry
    spec: ModelSpec
    window: Window


def history_before(entries: Sequence[ChatEntry], entry_id: str) -> list[ChatEntry]:
    """The entries older than `entry_id` (concurrent turns may have appended after it); all if absent."""
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].id == entry_id:
            return list(entries[:index])
    return [e for e in entries if e.id != entry_id]


def history_cap(windows: ContextWindowManager) -> int:
    """Redis keeps enough for the largest window of any registered model, plus the new message itself."""
    return max(windows.fetch_limit(spec) for spec in windows.registry) + 1


class ChatStream:
    """A reply being streamed: iterate `chunks()`; the reply is persisted when the stream completes and
    `result` is set then. If the client goes away mid-stream nothing partial is stored."""

    def __init__(self, manager: ChatWorkflowManager, turn: _Turn) -> None:
        self._manager = manager
        self._turn = turn
        self.result: ChatResult | None = None

    @property
    def session_id(self) -> str:
        return self._turn.session_id

    @property
    def model(self) -> str:
        return self._turn.spec.name

    @property
    def message_id(self) -> str:
        return self._turn.user.id

    async def chunks(self) -> AsyncIterator[str]:
        turn, provider = self._turn, self._manager.provider
        parts: list[str] = []
        async for chunk in provider.stream(
            turn.window.messages, model=turn.spec, max_tokens=turn.window.max_output_tokens
        ):
            parts.append(chunk)
            yield chunk
        self.result = await self._manager._finish(turn, "".join(parts))


class ChatWorkflowManager:
    """Owns the chat history view, the transcripts and the provider (closed by `aclose`); not the Redis
    client, which the service shares with its readiness check and closes itself.

    `redis_slots` is how many pieces of Redis work may be in flight at once (the pool's size, less what
    others such as the readiness check need) and `busy_wait_s` how long a request waits for one before it
    is answered "busy"; `retry_after_s` is what that answer tells the client."""

    def __init__(
        self,
        *,
        redis: Redis,
        windows: ContextWindowManager,
        provider: LLMProvider,
        transcripts: TranscriptStore,
        history_ttl_s: int,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_history: int | None = None,
        redis_slots: int = 63,
        busy_wait_s: float = 2.0,
        retry_after_s: int = 1,
    ) -> None:
        self.windows = windows
        self.provider = provider
        self.transcripts = transcripts
        self.system_prompt = system_prompt
        cap = history_cap(windows) if max_history is None else max_history
        self.history = RedisChatHistory(redis, max_messages=cap, ttl_s=history_ttl_s)
        self._slots = BoundedSlots(redis_slots)
        self._busy_wait_s = busy_wait_s
        self._retry_after_s = retry_after_s
        self._initialized = False

    async def initialize(self) -> None:
        await self.transcripts.initialize()
        self._initialized = True

    async def aclose(self) -> None:
        self._initialized = False
        try:
            await self.provider.aclose()
        finally:
            await self.transcripts.aclose()

    async def chat(self, session_id: str, message: str, model: str | None = None) -> ChatResult:
        turn = await self._begin(session_id, message, model)
        completion = await self.provider.complete(
            turn.window.messages, model=turn.spec, max_tokens=turn.window.max_output_tokens
        )
        return await self._finish(turn, completion.text)

    async def stream(self, session_id: str, message: str, model: str | None = None) -> ChatStream:
        """Persist the message and build the window now (so errors surface before any byte is streamed);
        the returned stream asks the provider when iterated."""
        return ChatStream(self, await self._begin(session_id, message, model))

    async def messages(
        self,
        session_id: str,
        *,
        model: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> MessagesView:
        """A page of the session's messages, oldest first within the page, ending just before sequence
        number `before` (or at the newest). By default the window's worth for the session's model (the one
        given, else the one it last chatted with, else the default); `limit` is capped by the history Redis
        keeps, which the registry sizes. Pages older than what Redis holds come from the transcript, so
        `next_before` leads back to the first message. A list behind its transcript is rebuilt first."""
        validate_session_id(session_id)
        named = self.windows.resolve(model) if model is not None else None  # unknown: refused before I/O
        async with self._slot(session_id):
            spec = named
            if spec is None:
                stored = await self._history_call(session_id, self.history.session_model(session_id))
                spec = self._known_or_default(stored)
            size = self.windows.fetch_limit(spec) if limit is None else limit
            size = max(1, min(size, self.history.max_messages))
            page = await self._history_call(
                session_id, self.history.page(session_id, limit=size, before=before)
            )
            newest = await self.transcripts.newest(session_id)
            if not _in_step(page, newest, before) and not _served_elsewhere(page, newest):
                page = await self._rebuild_for_read(session_id, size, before)
        wanted = page_bounds(page.total, page.total, size, before)
        if wanted is not None and wanted[0] < page.oldest_retained:
            older = await self.transcripts.page(session_id, *wanted)
            page = HistoryPage(entries=older, total=page.total, retained=page.retained)
        return MessagesView(session_id=session_id, model=spec.name, limit=size, page=page)

    async def delete_session(self, session_id: str) -> None:
        """Remove the session's transcript and Redis history (issue 15), under the session's transcript lock
        (this process and every other), so no turn writes half into a deleted session."""
        validate_session_id(session_id)
        async with self.transcripts.locked(session_id) as transcript:
            await transcript.delete()
            await self._history_call(session_id, self.history.delete(session_id))

    # -- the turn ---------------------------------------------------------------------------------------

    async def _begin(self, session_id: str, message: str, model: str | None) -> _Turn:
        self._require_initialized()
        validate_session_id(session_id)
        if not message.strip():
            raise EmptyMessageError("message must not be empty")
        spec = self.windows.resolve(model)
        user = ChatEntry.new("user", message)
        self.windows.admit(spec, self.system_prompt, user.to_message())
        # Decided: the message is accepted. What follows stores it, or fails without storing it.
        window_size = self.windows.fetch_limit(spec) + 1  # one more than the model can use: the new message
        async with self._slot(session_id), self.transcripts.locked(session_id) as transcript:
            receipt = await transcript.append([user])
            try:
                fetched = await self._to_redis(transcript, [user], receipt, model=None, window=window_size)
            except HistoryBusyError as exc:
                raise self._busy(session_id, [user.id], str(exc)) from exc
            except HistoryUnavailableError as exc:
                raise ChatUnavailableError(session_id, [user.id], str(exc)) from exc
        # System messages come only as the system prompt; with those filtered out the window cannot refuse a
        # user message that `admit` accepted (older history is dropped until it fits).
        history = [e for e in history_before(fetched, user.id) if e.role != "system"]
        window = self.windows.build(
            spec, self.system_prompt, [e.to_message() for e in history], user.to_message()
        )
        return _Turn(session_id=session_id, user=user, spec=spec, window=window)

    async def _finish(self, turn: _Turn, text: str) -> ChatResult:
        reply = ChatEntry.new("assistant", text)
        session_id = turn.session_id
        # The reply is stored even without a Redis slot: the transcript is the record, Redis catches up.
        async with (
            self._slots.hold(self._busy_wait_s) as slot,
            self.transcripts.locked(session_id) as transcript,
        ):
            receipt = await transcript.append([reply])
            try:
                if not slot:
                    raise HistoryBusyError("no Redis slot became free in time")
                await self._to_redis(transcript, [reply], receipt, model=turn.spec.name, window=0)
            except HistoryUnavailableError as exc:
                log.warning(
                    "reply %s of session %r is in the transcript but not in Redis (%s); the session's "
                    "next turn or read rebuilds it",
                    reply.id,
                    session_id,
                    exc,
                )
        window = turn.window
        history_used = len(window.messages) - 1 - (1 if self.system_prompt else 0)
        return ChatResult(
            session_id=session_id,
            model=turn.spec.name,
            reply=text,
            message_id=turn.user.id,
            reply_id=reply.id,
            prompt_tokens=window.prompt_tokens,
            max_output_tokens=window.max_output_tokens,
            history_used=history_used,
            history_dropped=window.dropped,
            provider=self.provider.name,
        )

    # -- Redis, converging to the transcript ------------------------------------------------------------

    async def _to_redis(
        self,
        transcript: SessionTranscript,
        entries: Sequence[ChatEntry],
        receipt: AppendReceipt,
        *,
        model: str | None,
        window: int,
    ) -> list[ChatEntry]:
        """Append what the transcript just took; if Redis was not in step before, rebuild it from the
        transcript (the lock is held, so nobody appends meanwhile). Returns the newest `window` entries."""
        session_id = transcript.session_id
        result = await self.history.append(
            session_id, entries, last_seq=receipt.last_seq, model=model, window=window
        )
        if not result.diverged:
            return result.window
        if result.held_total > receipt.last_seq - len(entries):
            # Redis held more than this machine's transcript: the session was served by another main-backend
            # (its transcript is the record there). Keep Redis's longer window, which the append extended,
            # and its count; never cut it back to this machine's shorter record.
            await self.history.set_total(session_id, result.held_total + len(entries))
            log.info("session %r was served by another main-backend; its Redis window is kept", session_id)
            return result.window
        newest = await transcript.tail(self.history.max_messages)
        await self.history.replace(session_id, [r.entry for r in newest], total=receipt.last_seq)
        log.info("chat history of session %r was not in step with its transcript; rebuilt", session_id)
        return [r.entry for r in newest[-window:]] if window > 0 else []

    async def _rebuild_for_read(self, session_id: str, size: int, before: int | None) -> HistoryPage:
        async with self.transcripts.locked(session_id) as transcript:
            page = await self._history_call(
                session_id, self.history.page(session_id, limit=size, before=before)
            )
            newest = await transcript.tail(self.history.max_messages)
            if _in_step(page, newest[-1] if newest else None, before) or _served_elsewhere(
                page, newest[-1] if newest else None
            ):
                return page  # a turn brought it in step while this read waited for the lock
            total = newest[-1].seq if newest else 0
            await self._history_call(
                session_id, self.history.replace(session_id, [r.entry for r in newest], total=total)
            )
            log.info("chat history of session %r was behind its transcript; rebuilt on read", session_id)
            return await self._history_call(
                session_id, self.history.page(session_id, limit=size, before=before)
            )

    # -- helpers ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, session_id: str) -> AsyncIterator[None]:
        """Hold a Redis slot; none free in time is ChatBusyError (before anything was stored)."""
        async with self._slots.hold(self._busy_wait_s) as slot:
            if not slot:
                raise self._busy(
                    session_id,
                    (),
                    f"{self._slots.capacity} requests are already using the chat history "
                    f"store and none finished within {self._busy_wait_s:g} s",
                )
            yield

    def _busy(self, session_id: str, saved: Sequence[str], reason: str) -> ChatBusyError:
        return ChatBusyError(session_id, saved, reason, self._retry_after_s)

    def _known_or_default(self, stored: str | None) -> ModelSpec:
        """The model a session last chatted with, if the registry still has it; else the default."""
        return self.windows.resolve(stored if stored in self.windows.registry else None)

    async def _history_call(self, session_id: str, call: Awaitable[T]) -> T:
        """Await a read-side history call; Redis trouble becomes ChatBusyError or ChatUnavailableError
        (nothing was saved)."""
        try:
            result = await call
        except HistoryBusyError as exc:
            raise self._busy(session_id, [], str(exc)) from exc
        except HistoryUnavailableError as exc:
            raise ChatUnavailableError(session_id, [], str(exc)) from exc
        return result

    def _require_initialized(self) -> None:
        if not self._initialized:
            raise RuntimeError("call 'await ChatWorkflowManager.initialize()' before use")


def _served_elsewhere(page: HistoryPage, newest: StoredEntry | None) -> bool:
    """Redis holds more of the session than this machine's transcript: another main-backend served it (nginx
    keeps an identity on one machine; a machine added or lost moves some). Its transcript is the record
    there, so Redis is never cut back to this machine's shorter one."""
    return page.total > (newest.seq if newest is not None else 0)


def _in_step(page: HistoryPage, newest: StoredEntry | None, before: int | None) -> bool:
    """Whether a Redis page agrees with the transcript's newest record: same message count and, when the
    page ends at the newest message, the same newest message."""
    total = newest.seq if newest is not None else 0
    if page.total != total:
        return False
    if before is not None:
        return True
    held = page.entries[-1].entry.id if page.entries else None
    return held == (newest.entry.id if newest is not None else None)
