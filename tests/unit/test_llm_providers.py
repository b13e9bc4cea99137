"""The Ollama and OpenAI-compatible providers, over real HTTP on loopback against a fake LLM runtime."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from tests.unit.llm_runtime_fakes import PROMPT_EVAL_COUNT, FakeLLMRuntime, Script, running_fake_llm_runtime

from autobot.context import ContextWindowManager, ModelRegistry, ModelSpec
from autobot.llm import Completion, LLMError, LLMProvider, LLMResponseError, LLMUnavailableError
from autobot.llm.ollama import OllamaProvider
from autobot.llm.openai_compat import OpenAICompatProvider
from autobot.messages import Message

REGISTRY = ModelRegistry.load()
PHI3 = REGISTRY.get("phi3:mini")
MESSAGES = [Message("system", "Be brief."), Message("user", "Hi there"), Message("assistant", "Hello!")]
MESSAGES += [Message("user", "Summarise Redis ACLs in one line, 日本語でも.")]
KINDS = ["ollama", "openai"]


@pytest.fixture
def runtime() -> Iterator[FakeLLMRuntime]:
    with running_fake_llm_runtime() as fake:
        yield fake


def _provider(kind: str, url: str, *, timeout_s: float = 5.0, api_key: str | None = None) -> LLMProvider:
    if kind == "ollama":
        return OllamaProvider(url, timeout_s=timeout_s)
    return OpenAICompatProvider(url, timeout_s=timeout_s, api_key=api_key)


@pytest.fixture(params=KINDS)
async def provider(request: pytest.FixtureRequest, runtime: FakeLLMRuntime) -> AsyncIterator[LLMProvider]:
    llm = _provider(request.param, runtime.url)
    yield llm
    await llm.aclose()


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in stream]


async def test_ollama_complete_sends_num_ctx_and_num_predict(runtime: FakeLLMRuntime) -> None:
    llm = OllamaProvider(runtime.url, timeout_s=5)
    completion = await llm.complete(MESSAGES, model=PHI3, max_tokens=321)
    await llm.aclose()

    assert completion == Completion(
        text="Hello from the fake LLM runtime.",
        model="fake-model:latest",
        prompt_tokens=PROMPT_EVAL_COUNT,
        completion_tokens=6,
        provider="ollama",
    )
    sent = runtime.last
    assert sent.path == "/api/chat"
    assert sent.body == {
        "model": "phi3:mini",
        "messages": [m.to_dict() for m in MESSAGES],
        "stream": False,
        "options": {"num_ctx": 4096, "num_predict": 321},
    }


async def test_openai_complete_sends_max_tokens_and_bearer_key(runtime: FakeLLMRuntime) -> None:
    llm = OpenAICompatProvider(runtime.url + "/v1/", timeout_s=5, api_key="sk-local-test")
    completion = await llm.complete(MESSAGES, model=PHI3, max_tokens=77)
    await llm.aclose()

    assert completion.text == "Hello from the fake LLM runtime."
    assert (completion.prompt_tokens, completion.completion_tokens) == (PROMPT_EVAL_COUNT, 7)
    assert completion.provider == "openai"
    sent = runtime.last
    assert sent.path == "/v1/chat/completions"  # "/v1" in base_url is not doubled
    assert sent.headers["Authorization"] == "Bearer sk-local-test"
    assert sent.body == {
        "model": "phi3:mini",
        "messages": [m.to_dict() for m in MESSAGES],
        "max_tokens": 77,
        "stream": False,
    }


async def test_openai_without_key_sends_no_authorization(runtime: FakeLLMRuntime) -> None:
    llm = OpenAICompatProvider(runtime.url, timeout_s=5)
    await llm.complete(MESSAGES, model=PHI3, max_tokens=5)
    await llm.aclose()
    assert "Authorization" not in runtime.last.headers


async def test_stream_yields_chunks_in_order(provider: LLMProvider, runtime: FakeLLMRuntime) -> None:
    runtime.script = Script(chunks=["Red", "is ", "ACLs: ", "", "one user per service."])
    chunks = await _collect(provider.stream(MESSAGES, model=PHI3, max_tokens=64))
    assert chunks == ["Red", "is ", "ACLs: ", "one user per service."]
    body = runtime.last.body
    assert body["stream"] is True
    assert body["messages"] == [m.to_dict() for m in MESSAGES]
    if provider.name == "ollama":
        assert body["options"] == {"num_ctx": 4096, "num_predict": 64}
    else:
        assert body["max_tokens"] == 64


async def test_window_from_the_manager_drives_the_request(runtime: FakeLLMRuntime) -> None:
    manager = ContextWindowManager(REGISTRY)
    history = [
        Message("user", f"question {i}") if i % 2 == 0 else Message("assistant", "answer") for i in range(40)
    ]
    window = manager.build("phi3:mini", "You are AutoBot.", history, Message("user", "and now?"))
    llm = OllamaProvider(runtime.url, timeout_s=5)
    await llm.complete(window.messages, model=window.model, max_tokens=window.max_output_tokens)
    await llm.aclose()
    options = runtime.last.body["options"]
    assert options == {"num_ctx": 4096, "num_predict": 1024}
    assert len(runtime.last.body["messages"]) == len(window.messages) == 1 + 20 + 1


async def test_connection_refused_is_unavailable() -> None:
    for kind in KINDS:
        llm = _provider(kind, _refused_url())
        with pytest.raises(LLMUnavailableError, match="cannot connect"):
            await llm.complete(MESSAGES, model=PHI3, max_tokens=5)
        with pytest.raises(LLMUnavailableError, match="cannot connect"):
            await _collect(llm.stream(MESSAGES, model=PHI3, max_tokens=5))
        await llm.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_timeout_is_unavailable(kind: str, runtime: FakeLLMRuntime) -> None:
    runtime.script = Script(delay_s=5)
    slow = _provider(kind, runtime.url, timeout_s=0.2)
    with pytest.raises(LLMUnavailableError, match="timed out"):
        await slow.complete(MESSAGES, model=PHI3, max_tokens=5)
    await slow.aclose()


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_are_unavailable(
    provider: LLMProvider, runtime: FakeLLMRuntime, status: int
) -> None:
    runtime.script = Script(status=status, raw_body=b'{"error": "llama runner process has terminated"}')
    with pytest.raises(LLMUnavailableError, match=f"HTTP {status}: llama runner process has terminated"):
        await provider.complete(MESSAGES, model=PHI3, max_tokens=5)
    with pytest.raises(LLMUnavailableError, match=f"HTTP {status}"):
        await _collect(provider.stream(MESSAGES, model=PHI3, max_tokens=5))


async def test_client_errors_are_llm_errors_with_the_runtime_message(
    provider: LLMProvider, runtime: FakeLLMRuntime
) -> None:
    runtime.script = Script(status=404, raw_body=b'{"error": {"message": "model \'phi3:mini\' not found"}}')
    with pytest.raises(LLMError, match="HTTP 404: model 'phi3:mini' not found") as caught:
        await provider.complete(MESSAGES, model=PHI3, max_tokens=5)
    assert not isinstance(caught.value, LLMUnavailableError)


async def test_malformed_json_is_a_response_error(provider: LLMProvider, runtime: FakeLLMRuntime) -> None:
    runtime.script = Script(raw_body=b"<html>bad gateway page</html>")
    with pytest.raises(LLMResponseError, match="malformed JSON"):
        await provider.complete(MESSAGES, model=PHI3, max_tokens=5)


async def test_wrong_shape_is_a_response_error(provider: LLMProvider, runtime: FakeLLMRuntime) -> None:
    runtime.script = Script(raw_body=b'{"unexpected": true}')
    with pytest.raises(LLMResponseError):
        await provider.complete(MESSAGES, model=PHI3, max_tokens=5)
    runtime.script = Script(raw_body=b"[1, 2]")
    with pytest.raises(LLMResponseError, match="expected an object"):
        await provider.complete(MESSAGES, model=PHI3, max_tokens=5)


async def test_malformed_stream_line_is_a_response_error(
    provider: LLMProvider, runtime: FakeLLMRuntime
) -> None:
    runtime.script = Script(malformed_line=True)
    stream = provider.stream(MESSAGES, model=PHI3, max_tokens=5)
    assert await anext(stream) == Script().pieces()[0]  # what arrived before the bad line is delivered
    with pytest.raises(LLMResponseError, match="malformed JSON"):
        await anext(stream)


async def test_error_in_stream_is_an_llm_error(provider: LLMProvider, runtime: FakeLLMRuntime) -> None:
    runtime.script = Script(error_after_chunks=1)
    with pytest.raises(LLMError, match="ran out of memory"):
        await _collect(provider.stream(MESSAGES, model=PHI3, max_tokens=5))


async def test_cut_stream_is_unavailable(provider: LLMProvider, runtime: FakeLLMRuntime) -> None:
    runtime.script = Script(cut_stream=True)
    with pytest.raises(LLMUnavailableError):
        await _collect(provider.stream(MESSAGES, model=PHI3, max_tokens=5))


async def test_stream_without_done_is_unavailable(provider: LLMProvider, runtime: FakeLLMRuntime) -> None:
    # A complete HTTP body that never says the reply is finished: a runtime that died mid-answer.
    runtime.script = Script(raw_body=b"")
    with pytest.raises(LLMUnavailableError, match="ended the stream"):
        await _collect(provider.stream(MESSAGES, model=PHI3, max_tokens=5))


async def test_unknown_model_falls_back_to_the_default_name(runtime: FakeLLMRuntime) -> None:
    spec: ModelSpec = REGISTRY.get("no-such-model")
    llm = OllamaProvider(runtime.url, timeout_s=5)
    await llm.complete(MESSAGES, model=spec, max_tokens=5)
    await llm.aclose()
    assert runtime.last.body["model"] == REGISTRY.default_name
    assert runtime.last.body["options"]["num_ctx"] == spec.context_window_tokens


@pytest.mark.parametrize("url", ["ftp://host:21", "not a url", "http://"])
def test_bad_base_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        OllamaProvider(url, timeout_s=1)
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatProvider(url, timeout_s=1)
