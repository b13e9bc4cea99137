"""The "ai-stack" LLM provider: main-backend asks the ai-stack service, signed: `complete` with POST
/api/inference, `stream` with POST /api/inference/stream (both granted to main-backend by the matrix).

The calls go through ServiceClient, so every request carries an RFC 9421 signature made with main-backend's
pair key for ai-stack, and ai-stack's middleware verifies and authorises it like any other service call.
ai-stack re-applies the same model registry limits, so the window sent here is the window the runtime sees.

The streamed answer is NDJSON (see services/ai_stack.py): each `chunk` line is yielded as it arrives, so a
user of main-backend sees the reply grow as the runtime generates it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from autobot.client.service_client import (
    ServiceCallError,
    ServiceClient,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from autobot.config import ConfigError, LLMConfig, ServiceConfig
from autobot.context.registry import ModelSpec
from autobot.llm.base import Completion, LLMError, LLMResponseError, LLMUnavailableError
from autobot.llm.factory import ProviderBuilder
from autobot.messages import Message
from autobot.security.keys import KeyId

TARGET = "ai-stack"
INFERENCE_PATH = "/api/inference"
STREAM_PATH = "/api/inference/stream"
PROVIDER_NAME = "ai-stack"
_MAX_DETAIL = 300


def inference_body(messages: Sequence[Message], model: ModelSpec, max_tokens: int) -> dict[str, Any]:
    return {"model": model.name, "messages": [m.to_dict() for m in messages], "max_tokens": max_tokens}


def error_detail(content: bytes) -> str:
    """ai-stack's own error text: `{"error", "detail"}` (from the app and its auth middleware alike);
    anything else is shown as (a prefix of) the body."""
    try:
        data = json.loads(content)
    except ValueError:
        return content[:_MAX_DETAIL].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        extra = data.get("detail")
        return f"{data['error']}: {extra}"[:_MAX_DETAIL] if extra else str(data["error"])[:_MAX_DETAIL]
    return str(data)[:_MAX_DETAIL]


def status_error(status: int, content: bytes, path: str = INFERENCE_PATH) -> LLMError:
    message = f"{PROVIDER_NAME}: POST {path} answered HTTP {status}: {error_detail(content)}"
    if status in (401, 403):
        # A signing or matrix problem between the services, not a model failure: say where to look.
        message += " (check the service keys and the matrix grant for main-backend on ai-stack)"
    if status >= 500 or status == 429:
        return LLMUnavailableError(message)
    return LLMError(message)


def parse_completion(content: bytes) -> Completion:
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise LLMResponseError(f"{PROVIDER_NAME}: answered malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LLMResponseError(f"{PROVIDER_NAME}: answered JSON {type(data).__name__}, expected an object")
    text, model = data.get("text"), data.get("model")
    if not isinstance(text, str) or not isinstance(model, str):
        raise LLMResponseError(f"{PROVIDER_NAME}: the answer lacks a string 'text' or 'model'")

    def count(key: str) -> int | None:
        value = data.get(key)
        return value if type(value) is int else None

    upstream = data.get("provider")
    return Completion(
        text=text,
        model=model,
        prompt_tokens=count("prompt_tokens"),
        completion_tokens=count("completion_tokens"),
        provider=f"{PROVIDER_NAME} ({upstream})" if isinstance(upstream, str) else PROVIDER_NAME,
    )


def stream_line_text(line: str) -> str | None:
    """The text a line of the streamed answer adds ("" for a blank line or a type unknown here), None for the
    closing `done` line; an `error` line raises the matching LLMError, a malformed line LLMResponseError."""
    if not line.strip():
        return ""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise LLMResponseError(f"{PROVIDER_NAME}: {STREAM_PATH} sent a malformed line ({exc})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        raise LLMResponseError(f"{PROVIDER_NAME}: {STREAM_PATH} sent a line without a 'type': {line:.80}")
    if kind == "chunk":
        text = data.get("text")
        if not isinstance(text, str):
            raise LLMResponseError(f"{PROVIDER_NAME}: {STREAM_PATH} sent a chunk without a string 'text'")
        return text
    if kind == "done":
        return None
    if kind == "error":
        message = f"{PROVIDER_NAME}: {STREAM_PATH} failed mid-stream: {error_detail(line.encode())}"
        # The codes ai-stack's /api/inference answers with 503 and 502.
        if data.get("error") == "llm_unavailable":
            raise LLMUnavailableError(message)
        raise LLMError(message)
    # A newer ai-stack may add line types (callees deploy before their callers): not an error here.
    return ""


async def reply_chunks(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The chunks of a streamed answer, given its lines; a stream that ends before `done` was cut short."""
    async for line in lines:
        text = stream_line_text(line)
        if text is None:
            return
        if text:
            yield text
    raise LLMUnavailableError(f"{PROVIDER_NAME}: {STREAM_PATH} ended before its 'done' line (cut short)")


class AiStackProvider:
    """LLMProvider over the ai-stack service. An injected client belongs to its maker and is not closed."""

    name = PROVIDER_NAME

    def __init__(self, client: ServiceClient, *, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client

    @property
    def signing_key_id(self) -> KeyId:
        return self._client.signing_key_id

    @classmethod
    def from_config(cls, config: ServiceConfig) -> AiStackProvider:
        """Sign with the keys of config.security, call the URL in config.peers["ai-stack"], time out after
        config.llm.timeout_s (a reply can take long; POST is never retried)."""
        if TARGET not in config.peers:
            raise ConfigError(f"llm.provider 'ai-stack' needs peers['{TARGET}'] (the ai-stack base URL)")
        try:
            client = ServiceClient.from_config(config, timeout=config.llm.timeout_s)
        except ServiceCallError as exc:
            raise ConfigError(str(exc)) from exc
        return cls(client, owns_client=True)

    async def complete(self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int) -> Completion:
        try:
            response = await self._client.post(
                TARGET, INFERENCE_PATH, json=inference_body(messages, model, max_tokens)
            )
        except (ServiceTimeoutError, ServiceUnavailableError) as exc:
            raise LLMUnavailableError(f"{PROVIDER_NAME}: {exc}") from exc
        except ServiceCallError as exc:
            raise LLMError(f"{PROVIDER_NAME}: {exc}") from exc
        if response.status_code >= 400:
            raise status_error(response.status_code, response.content)
        return parse_completion(response.content)

    async def stream(
        self, messages: Sequence[Message], *, model: ModelSpec, max_tokens: int
    ) -> AsyncIterator[str]:
        body = inference_body(messages, model, max_tokens)
        try:
            async with self._client.stream(TARGET, "POST", STREAM_PATH, json=body) as response:
                if response.status_code >= 400:
                    raise status_error(response.status_code, await response.aread(), STREAM_PATH)
                async for chunk in reply_chunks(response.aiter_lines()):
                    yield chunk
        except (ServiceTimeoutError, ServiceUnavailableError) as exc:
            raise LLMUnavailableError(f"{PROVIDER_NAME}: {exc}") from exc
        except ServiceCallError as exc:
            raise LLMError(f"{PROVIDER_NAME}: {exc}") from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def ai_stack_builders(config: ServiceConfig) -> dict[str, ProviderBuilder]:
    """The builder for `make_provider(cfg, extra_builders=...)`: it needs the whole service config (keys,
    peers), which the LLM section alone does not carry."""

    def build(_: LLMConfig) -> AiStackProvider:
        return AiStackProvider.from_config(config)

    return {PROVIDER_NAME: build}
