"""A development stand-in for an LLM, for the local cluster and tests: it says plainly what it is.

It answers deterministically, from the window it was given, at near-zero CPU cost, so the whole chat path
(history, context window, transcripts) can run without a model. It never pretends to be one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence

from autobot.context.registry import ModelSpec
from autobot.llm.base import Completion
from autobot.messages import Message

_PREVIEW_CHARS = 60


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
            await asyncio.sleep(0)  # let other requests run between chunks, as a real stream would

    async def aclose(self) -> None:
        return None
