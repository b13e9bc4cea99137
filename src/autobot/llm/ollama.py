"""Ollama's native chat API (POST /api/chat). Native, not the OpenAI-compatible endpoint, because only the
native API takes `num_ctx` per request; without it Ollama uses its own default window and silently cuts the
prompt to its tail."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from autobot.context.registry import ModelSpec
from autobot.llm._http import ChatEndpoint, check_base_url, optional_int, parse_object
from autobot.llm.base import Completion, LLMError, LLMResponseError, LLMUnavailableError
from autobot.messages import Message

CHAT_PATH = "/api/chat"


class OllamaProvider:
    name = "ollama"

    def __init__(self, base_url: str, *, timeout_s: float, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = check_base_url(self.name, base_url)
        self._endpoint = ChatEndpoint(self.name, self.base_url, CHAT_PATH, timeout_s=timeout_s, client=client)
        self._url = self._endpoint.url

    def request_body(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int, stream: bool
    ) -> dict[str, Any]:
        return {
            "model": model.name,
            "messages": [m.to_dict() for m in messages],
            "stream": stream,
            "options": {"num_ctx": model.context_window_tokens, "num_predict": max_tokens},
        }

    async def complete(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> Completion:
        body = self.request_body(messages, model=model, max_tokens=max_tokens, stream=False)
        data = await self._endpoint.post_json(body)
        if "error" in data:
            raise LLMError(f"{self.name}: {self._url} answered an error: {data['error']}")
        return Completion(
            text=self._content(data),
            model=str(data.get("model") or model.name),
            prompt_tokens=optional_int(data, "prompt_eval_count"),
            completion_tokens=optional_int(data, "eval_count"),
            provider=self.name,
        )

    async def stream(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int
    ) -> AsyncIterator[str]:
        body = self.request_body(messages, model=model, max_tokens=max_tokens, stream=True)
        async with self._endpoint.stream_lines(body) as lines:
            # NDJSON: one object per line, the last with "done": true; errors arrive as {"error": ...}.
            async for line in lines:
                if not line.strip():
                    continue
                data = parse_object(self.name, self._url, line)
                if "error" in data:
                    raise LLMError(f"{self.name}: {self._url} failed mid-stream: {data['error']}")
                chunk = self._content(data)
                if chunk:
                    yield chunk
                if data.get("done") is True:
                    return
        raise LLMUnavailableError(f"{self.name}: {self._url} ended the stream before it was done")

    def _content(self, data: dict[str, Any]) -> str:
        message = data.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            if data.get("done") is True and message is None:
                return ""  # the closing line of a stream may carry no message
            raise LLMResponseError(
                f"{self.name}: {self._url} answered without message.content: {data!r:.200}"
            )
        return content

    async def aclose(self) -> None:
        await self._endpoint.aclose()
