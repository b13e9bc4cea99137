"""ai-stack: inference in front of the LLM runtime (POST /api/inference, POST /api/inference/stream,
GET /api/models, GET /api/health).

Every prompt is fitted to the model's limits from the model registry here too, with the same window builder
main-backend uses, so a caller that sends too much gets the same trimming (or the same clear error) as a user
of main-backend, and the runtime never silently cuts a prompt. The reply length is capped at the model's
max_output_tokens.

The streamed route takes the same body and applies the same limits; it answers NDJSON, one object a line:
`{"type": "chunk", "text": ...}` as the runtime generates, then `{"type": "done", ...}`, or `{"type": "error",
"error": <code>, "detail": ...}` when the runtime fails once the stream has begun. A failure before the first
chunk is an ordinary HTTP error, as on /api/inference.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autobot.config import ServiceConfig
from autobot.context.registry import ModelRegistry, ModelSpec
from autobot.context.tokens import HeuristicTokenizer
from autobot.context.window import ContextTooLargeError, ContextWindowManager, Window
from autobot.llm.base import Completion, LLMError, LLMProvider, LLMUnavailableError
from autobot.llm.factory import make_provider
from autobot.messages import Message
from autobot.middleware.body_size_limit import post_body_limit
from autobot.services.http.app import service_app
from autobot.services.http.errors import ApiError
from autobot.services.http.health import Readiness
from autobot.services.http.lifespan import open_redis

SERVICE_ID = "ai-stack"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_MESSAGES = 1024
MAX_MODEL_NAME = 200
NDJSON = "application/x-ndjson"


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)


# --- pure functions -------------------------------------------------------------------------------------


def parse_messages(raw: Sequence[object]) -> list[Message]:
    """Messages from JSON, with the index of the first bad one in the error."""
    messages = []
    for index, item in enumerate(raw):
        try:
            messages.append(Message.from_dict(item))
        except ValueError as exc:
            raise ValueError(f"messages[{index}]: {exc}") from None
    return messages


def split_prompt(messages: Sequence[Message]) -> tuple[str | None, list[Message], Message]:
    """(system prompt, history, newest message): a system message may only come first."""
    system: str | None = None
    rest = list(messages)
    if rest and rest[0].role == "system":
        system = rest.pop(0).content
    if not rest:
        raise ValueError("messages hold only a system prompt; the model needs a message to answer")
    for index, message in enumerate(rest, start=1 if system is not None else 0):
        if message.role == "system":
            raise ValueError(f"messages[{index}]: a system message may only be the first message")
    return system, rest[:-1], rest[-1]


def reply_budget(spec: ModelSpec, requested: int | None) -> int:
    """The reply's token cap: what was asked for, never more than the model's max_output_tokens."""
    return spec.max_output_tokens if requested is None else min(requested, spec.max_output_tokens)


def model_summary(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "context_window_tokens": spec.context_window_tokens,
        "max_output_tokens": spec.max_output_tokens,
        "message_limit": spec.message_limit,
        "history_token_budget": spec.history_token_budget,
        "tokenizer": "heuristic" if isinstance(spec.tokenizer, HeuristicTokenizer) else "file",
    }


def build_window(manager: ContextWindowManager, request: InferenceRequest) -> Window:
    """The window for a request; ApiError 413 when it cannot fit the model, 422 when it is malformed."""
    spec = manager.spec(request.model)
    try:
        system, history, newest = split_prompt(parse_messages(request.messages))
        return manager.build(spec, system, history, newest)
    except ContextTooLargeError as exc:
        raise ApiError(
            413,
            "context_too_large",
            str(exc),
            needed_tokens=exc.needed_tokens,
            available_tokens=exc.available_tokens,
        ) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def llm_api_error(exc: LLMError) -> ApiError:
    """The runtime's failure as our caller sees it: unreachable or overloaded is 503, anything else 502."""
    if isinstance(exc, LLMUnavailableError):
        return ApiError(503, "llm_unavailable", str(exc))
    return ApiError(502, "llm_error", str(exc))


def window_fields(window: Window, max_tokens: int) -> dict[str, Any]:
    """What ai-stack decided about a request, in every answer: the registry model, the window, the cap."""
    spec = window.model
    return {
        "registry_model": spec.name,
        "requested_model": spec.requested_name,
        "fell_back": spec.fell_back,
        "max_tokens": max_tokens,
        "window": {
            "messages": len(window.messages),
            "dropped": window.dropped,
            "estimated_prompt_tokens": window.prompt_tokens,
        },
    }


def inference_response(window: Window, max_tokens: int, completion: Completion) -> dict[str, Any]:
    return {
        "text": completion.text,
        "model": completion.model,
        "provider": completion.provider,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        **window_fields(window, max_tokens),
    }


def stream_done(window: Window, max_tokens: int, provider: str) -> dict[str, Any]:
    """The closing line of a streamed reply. The provider interface streams text only, so the model is the
    registry's and the token counts are unknown (null), as a Completion allows."""
    return {
        "type": "done",
        "model": window.model.name,
        "provider": provider,
        "prompt_tokens": None,
        "completion_tokens": None,
        **window_fields(window, max_tokens),
    }


def ndjson_line(data: Mapping[str, Any]) -> bytes:
    """One NDJSON line; json.dumps escapes newlines inside strings, so no text can break the framing."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def ndjson_reply(
    first: str | None, rest: AsyncIterator[str], done: Mapping[str, Any]
) -> AsyncIterator[bytes]:
    """The streamed body: `first` (already generated; None for an empty reply), the rest as the runtime
    generates it, then `done`, or an error line once the runtime fails. The headers are sent by then, so the
    error can only travel in the body, in the same shape as an HTTP error."""
    try:
        if first is not None:
            yield ndjson_line({"type": "chunk", "text": first})
            async for chunk in rest:
                yield ndjson_line({"type": "chunk", "text": chunk})
    except LLMError as exc:
        yield ndjson_line({"type": "error", **llm_api_error(exc).body()})
        return
    finally:
        # Release the runtime's connection now, not when the generator is collected (client gone, error).
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
    yield ndjson_line(done)


# --- app ------------------------------------------------------------------------------------------------


def create_app(
    config: ServiceConfig,
    *,
    provider: LLMProvider | None = None,
    registry: ModelRegistry | None = None,
) -> FastAPI:
    """The ai-stack app. `provider` and `registry` replace the configured ones (tests); by default the
    provider comes from `config.llm`, the registry from the packaged file merged with config.models_file."""
    # Loaded now, not in the lifespan: a bad registry or tokenizer file fails `autobot serve` at once.
    registry = registry or ModelRegistry.load(config.models_file)
    manager = ContextWindowManager(registry)
    readiness = Readiness(timeout_s=config.redis.socket_timeout_s)

    async def setup(app: FastAPI, stack: contextlib.AsyncExitStack) -> None:
        llm = provider or make_provider(config.llm)
        if provider is None:
            stack.push_async_callback(llm.aclose)
        app.state.llm = llm
        # ai-stack keeps no data in Redis, but it cannot verify a signed call without its nonce store, so
        # "ready" includes Redis.
        open_redis(config.redis, stack, readiness)

    app = service_app(SERVICE_ID, setup, readiness, body_limit=post_body_limit(MAX_BODY_BYTES))

    @app.get("/api/models")
    async def models() -> dict[str, Any]:
        return {"default": registry.default_name, "models": [model_summary(spec) for spec in registry]}

    @app.post("/api/inference")
    async def inference(body: InferenceRequest, request: Request) -> dict[str, Any]:
        window = build_window(manager, body)
        max_tokens = reply_budget(window.model, body.max_tokens)
        llm: LLMProvider = request.app.state.llm
        try:
            completion = await llm.complete(window.messages, model=window.model, max_tokens=max_tokens)
        except LLMError as exc:
            raise llm_api_error(exc) from None
        return inference_response(window, max_tokens, completion)

    @app.post("/api/inference/stream")
    async def inference_stream(body: InferenceRequest, request: Request) -> StreamingResponse:
        window = build_window(manager, body)
        max_tokens = reply_budget(window.model, body.max_tokens)
        llm: LLMProvider = request.app.state.llm
        chunks = aiter(llm.stream(window.messages, model=window.model, max_tokens=max_tokens))
        # The first chunk before the headers: a runtime that cannot start answering gets the HTTP status
        # /api/inference would give, not a 200 with an error inside.
        try:
            first = await anext(chunks, None)
        except LLMError as exc:
            raise llm_api_error(exc) from None
        done = stream_done(window, max_tokens, llm.name)
        return StreamingResponse(
            ndjson_reply(first, chunks, done), media_type=NDJSON, headers={"Cache-Control": "no-store"}
        )

    return app
