"""ai-stack: /api/models from the registry, /api/inference and /api/inference/stream through the provider
interface, within the registry's limits, over real HTTP on loopback (offline stand-in, the FAKE LLM runtime
over HTTP, or the FAKE gated provider)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.cluster import serving
from tests.support.redis_server import RedisServer, free_port
from tests.unit.llm_runtime_fakes import FakeLLMRuntime, GatedFakeLLM, Script, running_fake_llm_runtime

from autobot.config import ListenConfig, LLMConfig, RedisConfig, ServiceConfig
from autobot.context import ModelRegistry
from autobot.messages import Message
from autobot.services.ai_stack import create_app, reply_budget, split_prompt

REGISTRY = ModelRegistry.load()
PHI3 = REGISTRY.get("phi3:mini")


def _config(
    redis_url: str, *, llm: LLMConfig | None = None, models_file: Path | None = None
) -> ServiceConfig:
    return ServiceConfig(
        service_id="ai-stack",
        listen=ListenConfig(port=8080),
        redis=RedisConfig(url=redis_url),
        llm=llm or LLMConfig(provider="offline"),
        models_file=models_file,
    )


def _refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- pure functions ---------------------------------------------------------------------------------------


def test_split_prompt() -> None:
    system, history, newest = split_prompt(
        [Message("system", "S"), Message("user", "a"), Message("assistant", "b"), Message("user", "c")]
    )
    assert system == "S"
    assert history == [Message("user", "a"), Message("assistant", "b")]
    assert newest == Message("user", "c")
    assert split_prompt([Message("user", "only")]) == (None, [], Message("user", "only"))


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([Message("system", "S")], "only a system prompt"),
        ([Message("user", "a"), Message("system", "S"), Message("user", "b")], r"messages\[1\]"),
        ([Message("system", "S"), Message("system", "T"), Message("user", "b")], r"messages\[1\]"),
    ],
)
def test_split_prompt_refuses(messages: list[Message], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        split_prompt(messages)


def test_reply_budget_never_exceeds_the_model() -> None:
    assert reply_budget(PHI3, None) == PHI3.max_output_tokens
    assert reply_budget(PHI3, 10) == 10
    assert reply_budget(PHI3, PHI3.max_output_tokens * 10) == PHI3.max_output_tokens


# --- over HTTP --------------------------------------------------------------------------------------------


@pytest.fixture
async def ai(redis_server: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(_config(redis_server.url))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def _infer(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/api/inference", json=body)


async def test_models_come_from_the_registry(ai: httpx.AsyncClient) -> None:
    response = await ai.get("/api/models")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == REGISTRY.default_name
    assert tuple(m["name"] for m in body["models"]) == REGISTRY.names()
    phi3 = next(m for m in body["models"] if m["name"] == "phi3:mini")
    assert phi3["context_window_tokens"] == PHI3.context_window_tokens
    assert phi3["max_output_tokens"] == PHI3.max_output_tokens


async def test_models_file_from_config_is_merged(redis_server: RedisServer, tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "default: tiny-test-model\n"
        "models:\n"
        "  tiny-test-model:\n"
        "    context_window_tokens: 512\n"
        "    max_output_tokens: 128\n"
        "    message_limit: 4\n"
        "    history_token_budget: 256\n"
        "    tokenizer: {kind: heuristic, chars_per_token: 4.0, safety_margin: 0.1}\n"
    )
    app = create_app(_config(redis_server.url, models_file=models_file))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        models = (await client.get("/api/models")).json()
        reply = await _infer(client, messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
    assert models["default"] == "tiny-test-model"
    assert "tiny-test-model" in [m["name"] for m in models["models"]]
    assert reply.json()["registry_model"] == "tiny-test-model"
    assert reply.json()["max_tokens"] == 128


async def test_inference_through_the_offline_provider(ai: httpx.AsyncClient) -> None:
    response = await _infer(
        ai,
        model="phi3:mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello ai-stack"}],
        max_tokens=50,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].startswith("[offline-echo]")
    assert "Hello ai-stack" in body["text"]
    assert body["provider"].startswith("offline-echo")
    assert body["registry_model"] == "phi3:mini"
    assert body["fell_back"] is False
    assert body["max_tokens"] == 50
    assert body["window"] == {
        "messages": 2,
        "dropped": 0,
        "estimated_prompt_tokens": pytest.approx(20, abs=15),
    }


async def test_unknown_model_falls_back_to_the_default(ai: httpx.AsyncClient) -> None:
    body = (await _infer(ai, model="no-such-model", messages=[{"role": "user", "content": "x"}])).json()
    assert body["registry_model"] == REGISTRY.default_name
    assert body["requested_model"] == "no-such-model"
    assert body["fell_back"] is True
    assert body["max_tokens"] == REGISTRY.get(None).max_output_tokens


async def test_long_history_is_windowed_to_the_budget(ai: httpx.AsyncClient) -> None:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 200} for i in range(40)]
    turns.append({"role": "user", "content": "and now?"})
    body = (await _infer(ai, model="phi3:mini", messages=turns)).json()
    assert body["window"]["dropped"] > 0
    assert body["window"]["messages"] <= PHI3.message_limit + 1
    assert body["window"]["estimated_prompt_tokens"] <= PHI3.prompt_token_budget


async def test_oversize_message_is_413(ai: httpx.AsyncClient) -> None:
    response = await _infer(ai, model="phi3:mini", messages=[{"role": "user", "content": "word " * 20_000}])
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "context_too_large"
    assert body["needed_tokens"] > body["available_tokens"]


async def test_invalid_requests(ai: httpx.AsyncClient) -> None:
    cases: list[tuple[Any, str]] = [
        ({"messages": []}, "invalid_request"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}, "messages[1]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "a"}], "temperature": 2}, "temperature"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "user turn"),
    ]
    for payload, expected in cases:
        response = await ai.post("/api/inference", json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert expected in response.text, (payload, response.text)


# --- with the FAKE LLM runtime over HTTP (what the Ollama provider really sends) --------------------------


@pytest.fixture
def runtime() -> Iterator[FakeLLMRuntime]:
    with running_fake_llm_runtime() as fake:
        yield fake


async def test_ollama_gets_the_window_and_capped_reply_length(
    redis_server: RedisServer, runtime: FakeLLMRuntime
) -> None:
    config = _config(redis_server.url, llm=LLMConfig(provider="ollama", base_url=runtime.url, timeout_s=5))
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    async with serving(create_app(config)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await _infer(client, model="phi3:mini", messages=messages, max_tokens=10**6)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == runtime.script.reply
    assert response.json()["provider"] == "ollama"
    sent = runtime.last.body
    assert sent["model"] == "phi3:mini"
    assert sent["messages"] == messages
    assert sent["options"] == {"num_ctx": PHI3.context_window_tokens, "num_predict": PHI3.max_output_tokens}


@pytest.mark.parametrize(("status", "expected"), [(500, 503), (429, 503), (400, 502)])
async def test_runtime_failures_map_to_gateway_errors(
    redis_server: RedisServer, runtime: FakeLLMRuntime, status: int, expected: int
) -> None:
    runtime.script = Script(status=status, raw_body=b'{"error": "model not loaded"}')
    config = _config(redis_server.url, llm=LLMConfig(provider="ollama", base_url=runtime.url, timeout_s=5))
    async with serving(create_app(config)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await _infer(client, messages=[{"role": "user", "content": "hi"}])
    assert response.status_code == expected
    assert "model not loaded" in response.json()["detail"]


async def test_unreachable_runtime_is_503(redis_server: RedisServer) -> None:
    config = _config(redis_server.url, llm=LLMConfig(provider="ollama", base_url=_refused_url(), timeout_s=2))
    async with serving(create_app(config)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await _infer(client, messages=[{"role": "user", "content": "hi"}])
    assert response.status_code == 503
    assert response.json()["error"] == "llm_unavailable"


# --- POST /api/inference/stream ---------------------------------------------------------------------------

STREAM = "/api/inference/stream"


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson", response.headers
    return [json.loads(line) for line in response.text.splitlines()]


async def test_stream_sends_the_reply_in_chunks_then_done(ai: httpx.AsyncClient) -> None:
    body = {
        "model": "phi3:mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream it"}],
        "max_tokens": 10**6,
    }
    streamed = await ai.post(STREAM, json=body)
    whole = await ai.post("/api/inference", json=body)
    assert streamed.status_code == 200, streamed.text
    lines = _lines(streamed)
    chunks, done = lines[:-1], lines[-1]
    assert len(chunks) > 1
    assert {line["type"] for line in chunks} == {"chunk"}
    assert "".join(line["text"] for line in chunks) == whole.json()["text"]
    assert done["type"] == "done"
    assert done["provider"].startswith("offline-echo")
    assert (done["model"], done["registry_model"], done["fell_back"]) == ("phi3:mini", "phi3:mini", False)
    assert done["max_tokens"] == PHI3.max_output_tokens  # capped as on /api/inference
    assert done["window"] == whole.json()["window"]
    assert (done["prompt_tokens"], done["completion_tokens"]) == (None, None)


async def test_stream_applies_the_same_limits(ai: httpx.AsyncClient) -> None:
    oversize = await ai.post(
        STREAM, json={"model": "phi3:mini", "messages": [{"role": "user", "content": "word " * 20_000}]}
    )
    assert oversize.status_code == 413
    assert oversize.json()["error"] == "context_too_large"
    for payload in ({"messages": []}, {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}):
        refused = await ai.post(STREAM, json=payload)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "invalid_request"
    unknown = _lines(
        await ai.post(STREAM, json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    )
    assert (unknown[-1]["registry_model"], unknown[-1]["fell_back"]) == (REGISTRY.default_name, True)


async def test_stream_sends_each_chunk_as_it_is_generated(redis_server: RedisServer) -> None:
    fake = GatedFakeLLM("first", [" second", " third"])
    app = create_app(_config(redis_server.url), provider=fake)
    async with (
        serving(app) as url,
        httpx.AsyncClient(base_url=url) as client,
        client.stream("POST", STREAM, json={"messages": [{"role": "user", "content": "hi"}]}) as response,
    ):
        lines = response.aiter_lines()
        # A bound on a hang, not a timed assertion: a buffered stream would never deliver this line.
        async with asyncio.timeout(10):
            first = json.loads(await anext(lines))
        fake.gate.set()  # only now are the other chunks generated
        rest = [json.loads(line) async for line in lines]
    assert first == {"type": "chunk", "text": "first"}
    assert [line.get("text") for line in rest] == [" second", " third", None]
    assert rest[-1]["provider"] == fake.name


async def _stream_from_ollama(
    redis_server: RedisServer, runtime: FakeLLMRuntime, script: Script
) -> httpx.Response:
    """POST /api/inference/stream to an ai-stack whose runtime is the FAKE Ollama runtime playing `script`."""
    runtime.script = script
    config = _config(redis_server.url, llm=LLMConfig(provider="ollama", base_url=runtime.url, timeout_s=5))
    async with serving(create_app(config)) as url, httpx.AsyncClient(base_url=url) as client:
        return await client.post(
            STREAM, json={"model": "phi3:mini", "messages": [{"role": "user", "content": "hi"}]}
        )


async def test_stream_relays_the_runtime_chunks(redis_server: RedisServer, runtime: FakeLLMRuntime) -> None:
    response = await _stream_from_ollama(redis_server, runtime, Script(chunks=["Hel", "lo", " there"]))
    lines = _lines(response)
    assert [line.get("text") for line in lines] == ["Hel", "lo", " there", None]
    assert (lines[-1]["type"], lines[-1]["provider"]) == ("done", "ollama")
    assert runtime.last.body["stream"] is True
    assert runtime.last.body["options"]["num_predict"] == PHI3.max_output_tokens


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(chunks=["a", "b", "c"], error_after_chunks=1), "llm_error"),
        (Script(chunks=["a", "b"], cut_stream=True), "llm_unavailable"),
    ],
)
async def test_runtime_failing_mid_stream_ends_with_an_error_line(
    redis_server: RedisServer, runtime: FakeLLMRuntime, script: Script, code: str
) -> None:
    response = await _stream_from_ollama(redis_server, runtime, script)
    assert response.status_code == 200  # the headers went out with the first chunk
    lines = _lines(response)
    assert lines[0] == {"type": "chunk", "text": "a"}
    assert (lines[-1]["type"], lines[-1]["error"]) == ("error", code)
    assert "ollama" in lines[-1]["detail"]
    assert not [line for line in lines if line["type"] == "done"]


@pytest.mark.parametrize(
    ("script", "status"),
    [
        (Script(status=500, raw_body=b'{"error": "model not loaded"}'), 503),
        (Script(status=400, raw_body=b'{"error": "model not loaded"}'), 502),
        (Script(error_after_chunks=0), 502),  # an error line before any chunk
    ],
)
async def test_runtime_failing_before_the_first_chunk_is_an_http_error(
    redis_server: RedisServer, runtime: FakeLLMRuntime, script: Script, status: int
) -> None:
    response = await _stream_from_ollama(redis_server, runtime, script)
    assert response.status_code == status, response.text
    assert response.json()["error"] == ("llm_unavailable" if status == 503 else "llm_error")


async def test_stream_from_an_unreachable_runtime_is_503(redis_server: RedisServer) -> None:
    config = _config(redis_server.url, llm=LLMConfig(provider="ollama", base_url=_refused_url(), timeout_s=2))
    async with serving(create_app(config)) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(STREAM, json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert response.json()["error"] == "llm_unavailable"
