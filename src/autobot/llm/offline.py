"""A development stand-in for an LLM, for the local cluster and tests: it says plainly what it is.

It answers deterministically, from the window it was given, at near-zero CPU cost, so the whole chat path
(history, context window, transcripts) can run without a model. It never pretends to be one.

Streamed, it sends one word per chunk with a small pause between chunks (`llm.offline_chunk_delay_s`, 20 ms
by default), so a browser on the local cluster sees the reply grow as it would from a model, instead of
receiving the whole text in one step. The pause is a timer on the event loop, not CPU work.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence

from autobot.context.registry import ModelSpec
from autobot.llm.base import Completion
from autobot.messages import Message

_PREVIEW_CHARS = 60
# A pace, not a latency simulation: longer pauses would only make the local cluster feel broken.
MAX_CHUNK_DELAY_S = 1.0


def offline_reply(messages: Sequence[Message], model: ModelSpec) -> str:
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), None)
    if last_user is None:
        about = "no user message"
    else:
        flat = " ".join(last_user.split())
        preview = flat if len(flat) <= _PREVIEW_CHARS else flat[: _PREVIEW_CHARS - 3] + "..."
        digest = hashlib.sha256(last_user.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        about = f'your last message ({len(last_user)} characters, sha256 {digest}): "{preview}"'
    return (
        f"[offline-echo] This is an offline development stand-in, not a language model; no model "
        f"({model.name}) was asked. It received {len(messages)} message(s) in the context window and "
        f"{about}."
    )


class OfflineEchoProvider:
    name = "offline-echo (not a language model)"

    def __init__(self, *, chunk_delay_s: float = 0.0) -> None:
        if not 0 <= chunk_delay_s <= MAX_CHUNK_DELAY_S:
            raise ValueError(
                f"chunk_delay_s must be between 0 and {MAX_CHUNK_DELAY_S} s, not {chunk_delay_s}"
            )
        self.chunk_delay_s = chunk_delay_s

    async def complete(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> Completion:
        return Completion(
            text=offline_reply(messages, model),
            model="offline-echo",
            prompt_tokens=None,
            completion_tokens=None,
            provider=self.name,
        )

    async def stream(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int
    ) -> AsyncIterator[str]:
        words = offline_reply(messages, model).split(" ")
        for index, word in enumerate(words):
            yield word if index == 0 else " " + word
            # Other requests run between chunks, as with a real stream; sleep(0) when unpaced.
            await asyncio.sleep(self.chunk_delay_s)

    async def aclose(self) -> None:
        return None
