"""ChatWorkflowManager: one chat turn, end to end, without blocking the event loop.

Order of a turn (the order is the point):
1. persist the user message: transcript first (durable, on disk), then Redis. If Redis is down the turn
   fails with ChatUnavailableError (503), but what the user sent is already in the transcript.
2. read the window's worth of history from Redis (`fetch_limit` of the model, one LRANGE, in the same
   MULTI transaction as the append of step 1, so it costs no extra round trip), never more;
3. build the context window for the model (its registry budgets decide what is kept);
4. ask the LLM provider;
5. persist the reply the same way.
A Redis miss (expired or lost list) is detected by the append itself and refilled from the transcript.
No message count is written here: every limit comes from the model registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis

from autobot.chat.entries import ChatEntry, validate_session_id
from autobot.chat.history import HistoryPage, HistoryUnavailableError, RedisChatHistory
from autobot.chat.locks import KeyedLocks
from autobot.chat.transcripts import TranscriptStore
from autobot.context import ContextWindowManager, ModelSpec, Window
from autobot.llm import LLMProvider

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
    client, which the service shares with its readiness check and closes itself."""

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
    ) -> None:
        self.windows = windows
        self.provider = provider
        self.transcripts = transcripts
        self.system_prompt = system_prompt
        cap = history_cap(windows) if max_history is None else max_history
        self.history = RedisChatHistory(redis, max_messages=cap, ttl_s=history_ttl_s)
        # One turn's persistence (transcript + Redis) at a time per session, so a miss refill is not raced.
        self._persist_locks = KeyedLocks()
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
        """Stored messages, newest page first. By default the window's worth for the session's model (the
        one given, else the one it last chatted with, else the default); `limit` is capped by the history
        Redis keeps, which the registry sizes."""
        validate_session_id(session_id)
        name = model if model is not None else await self._session_model(session_id)
        spec = self.windows.spec(name)
        size = self.windows.fetch_limit(spec) if limit is None else limit
        size = max(1, min(size, self.history.max_messages))
        page = await self._history_call(session_id, self.history.page(session_id, limit=size, before=before))
        if page.total == 0 and before is None:
            page = await self._refill_from_transcript(session_id, size)
        return MessagesView(session_id=session_id, model=spec.name, limit=size, page=page)

    async def delete_session(self, session_id: str) -> None:
        """Remove the session's transcript and Redis history (issue 15). Serialised with the persistence of
        its turns on this process, so none of them writes half into a deleted session."""
        validate_session_id(session_id)
        async with self._persist_locks.hold(session_id):
            await self.transcripts.delete(session_id)
            await self._history_call(session_id, self.history.delete(session_id))

    # -- the turn ---------------------------------------------------------------------------------------

    async def _begin(self, session_id: str, message: str, model: str | None) -> _Turn:
        self._require_initialized()
        validate_session_id(session_id)
        if not message.strip():
            raise EmptyMessageError("message must not be empty")
        spec = self.windows.spec(model)
        user = ChatEntry.new("user", message)
        # One more than the model can use: the new message is in the list too.
        fetched = await self._persist(
            session_id, [user], model=None, window=self.windows.fetch_limit(spec) + 1
        )
        history = history_before(fetched, user.id)
        window = self.windows.build(
            spec, self.system_prompt, [e.to_message() for e in history], user.to_message()
        )
        return _Turn(session_id=session_id, user=user, spec=spec, window=window)

    async def _finish(self, turn: _Turn, text: str) -> ChatResult:
        reply = ChatEntry.new("assistant", text)
        await self._persist(turn.session_id, [reply], model=turn.spec.name)
        window = turn.window
        history_used = len(window.messages) - 1 - (1 if self.system_prompt else 0)
        return ChatResult(
            session_id=turn.session_id,
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

    # -- persistence ------------------------------------------------------------------------------------

    async def _persist(
        self, session_id: str, entries: Sequence[ChatEntry], *, model: str | None, window: int = 0
    ) -> list[ChatEntry]:
        """Transcript first, then Redis; returns the newest `window` entries as Redis holds them after."""
        async with self._persist_locks.hold(session_id):
            transcript = await self.transcripts.append(session_id, entries)
            try:
                appended = await self.history.append(session_id, entries, model=model, window=window)
                if not appended.missed or len(transcript.messages) == len(entries):
                    return appended.window
                older = transcript.messages[: -len(entries)]
                await self.history.prepend(session_id, older, total=len(transcript.messages))
                return await self.history.window(session_id, window) if window > 0 else []
            except HistoryUnavailableError as exc:
                raise ChatUnavailableError(session_id, [e.id for e in entries], str(exc)) from exc

    async def _refill_from_transcript(self, session_id: str, size: int) -> HistoryPage:
        async with self._persist_locks.hold(session_id):
            page = await self._history_call(session_id, self.history.page(session_id, limit=size))
            if page.total:
                return page  # refilled by a turn while this one waited
            transcript = await self.transcripts.load(session_id)
            if transcript is None or not transcript.messages:
                return page
            await self._history_call(
                session_id,
                self.history.prepend(session_id, transcript.messages, total=len(transcript.messages)),
            )
            return await self._history_call(session_id, self.history.page(session_id, limit=size))

    async def _session_model(self, session_id: str) -> str | None:
        return await self._history_call(session_id, self.history.session_model(session_id))

    async def _history_call(self, session_id: str, call: Awaitable[T]) -> T:
        """Await a read-side history call; Redis trouble becomes ChatUnavailableError (nothing was saved)."""
        try:
            result = await call
        except HistoryUnavailableError as exc:
            raise ChatUnavailableError(session_id, [], str(exc)) from exc
        return result

    def _require_initialized(self) -> None:
        if not self._initialized:
            raise RuntimeError("call 'await ChatWorkflowManager.initialize()' before use")
