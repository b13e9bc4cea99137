"""The LLM provider interface: every chat completion in the cluster goes through one of these."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from autobot.context.registry import ModelSpec
from autobot.messages import Message


class LLMError(Exception):
    """The LLM call failed: the runtime refused the request or answered something unusable."""


class LLMUnavailableError(LLMError):
    """The runtime could not be reached or is failing (refused connection, timeout, 5xx, 429): worth a retry
    later, and a 503 to our own caller."""


class LLMResponseError(LLMError):
    """The runtime answered, but not in the API's format (malformed JSON, missing fields)."""


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    # The model the runtime says answered (may differ from the one asked, e.g. a resolved tag).
    model: str
    # Token counts as the runtime reports them; None when it reports none.
    prompt_tokens: int | None
    completion_tokens: int | None
    provider: str


class LLMProvider(Protocol):
    """One LLM backend. Implementations hold a connection pool: create once, `aclose()` on shutdown."""

    name: str

    async def complete(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> Completion:
        """The whole reply to `messages` (a context window), at most `max_tokens` long."""
        ...

    def stream(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> AsyncIterator[str]:
        """The reply as text chunks, as they are generated (implemented as an async generator)."""
        ...

    async def aclose(self) -> None: ...
