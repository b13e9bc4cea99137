"""OpenAI-compatible chat API (POST /v1/chat/completions): vLLM, llama.cpp's server, LM Studio, LocalAI.

The window size is the server's own setting here (the API has no num_ctx), so the registry entry must match
what the server was started with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from autobot.context.registry import ModelSpec
from autobot.llm._http import ChatEndpoint, check_base_url, optional_int, parse_object
from autobot.llm.base import Completion, LLMError, LLMResponseError, LLMUnavailableError
from autobot.messages import Message

CHAT_PATH = "/v1/chat/completions"


class OpenAICompatProvider:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        base = check_base_url(self.name, base_url)
        # Accept both conventions: "http://host:8000" and the OpenAI SDK's "http://host:8000/v1".
        self.base_url = base.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._endpoint = ChatEndpoint(
            self.name, self.base_url, CHAT_PATH, timeout_s=timeout_s, client=client, headers=headers
        )
        self._url = self._endpoint.url

    def request_body(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int, stream: bool
    ) -> dict[str, Any]:
        return {
            "model": model.name,
            "messages": [m.to_dict() for m in messages],
            "max_tokens": max_tokens,
            "stream": stream,
        }

    async def complete(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> Completion:
        body = self.request_body(messages, model=model, max_tokens=max_tokens, stream=False)
        data = await self._endpoint.post_json(body)
        self._raise_for_error(data)
        message = self._first_choice(data).get("message")
        content = message.get("content") if isinstance(message, dict) else None
        # content is null when the model answered only with tool calls: an empty text, not a broken reply.
        if content is not None and not isinstance(content, str):
            raise LLMResponseError(f"{self.name}: {self._url} answered a non-text message.content")
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Completion(
            text=content or "",
            model=str(data.get("model") or model.name),
            prompt_tokens=optional_int(usage, "prompt_tokens"),
            completion_tokens=optional_int(usage, "completion_tokens"),
            provider=self.name,
        )

    async def stream(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int
    ) -> AsyncIterator[str]:
        body = self.request_body(messages, model=model, max_tokens=max_tokens, stream=True)
        async with self._endpoint.stream_lines(body) as lines:
            # Server-sent events: `data: {json}` lines, blank lines between events, `data: [DONE]` last.
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # blank separators, `: keep-alive` comments, `event:` lines
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                data = parse_object(self.name, self._url, payload)
                self._raise_for_error(data)
                choices = data.get("choices")
                if not choices:
                    continue  # e.g. a final usage-only chunk
                delta = self._first_choice(data).get("delta")
                chunk = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(chunk, str) and chunk:
                    yield chunk
        raise LLMUnavailableError(f"{self.name}: {self._url} ended the stream without [DONE]")

    def _raise_for_error(self, data: dict[str, Any]) -> None:
        error = data.get("error")
        if error is not None:
            detail = error.get("message", error) if isinstance(error, dict) else error
            raise LLMError(f"{self.name}: {self._url} answered an error: {detail}")

    def _first_choice(self, data: dict[str, Any]) -> dict[str, Any]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMResponseError(f"{self.name}: {self._url} answered without choices: {data!r:.200}")
        return choices[0]

    async def aclose(self) -> None:
        await self._endpoint.aclose()
