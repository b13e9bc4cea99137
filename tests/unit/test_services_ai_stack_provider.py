"""The "ai-stack" LLM provider: main-backend's signed calls to a real ai-stack app behind the enforcement
middleware, over real HTTP on loopback, with key files laid out as the deployment lays them out. Behind
ai-stack: its offline stand-in, the FAKE LLM runtime over HTTP, or the FAKE gated provider."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.integration.cluster import (
    MATRIX_FILE,
    load_matrix,
    serving,
    wait_for_audit,
    write_key_dir,
)
from tests.support.redis_server import RedisServer, free_port
from tests.unit.llm_runtime_fakes import FakeLLMRuntime, GatedFakeLLM, Script, running_fake_llm_runtime

from autobot.config import ConfigError, ListenConfig, LLMConfig, RedisConfig, SecurityConfig, ServiceConfig
from autobot.context import ModelRegistry
from autobot.llm import LLMError, LLMResponseError, LLMUnavailableError, make_provider
from autobot.llm.ai_stack import (
    AiStackProvider,
    ai_stack_builders,
    error_detail,
    parse_completion,
    reply_chunks,
    status_error,
    stream_line_text,
)
from autobot.llm.base import LLMProvider
from autobot.messages import Message
from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware
from autobot.security.distribution import machine_key_files
from autobot.security.keyring_file import ControllerKeyring, ServiceKeys
from autobot.security.keys import generate_master_key
from autobot.services.ai_stack import create_app

PHI3 = ModelRegistry.load().get("phi3:mini")
MESSAGES = [Message("system", "Be brief."), Message("user", "Hello from main-backend")]


def _service_config(
    service: str,
    home: Path,
    redis_url: str,
    *,
    peers: dict[str, str] | None = None,
    llm: LLMConfig | None = None,
    matrix_file: Path = MATRIX_FILE,
) -> ServiceConfig:
    return ServiceConfig(
        service_id=service,  # type: ignore[arg-type]
        listen=ListenConfig(port=8001),
        redis=RedisConfig(url=redis_url),
        security=SecurityConfig(
            keys_dir=home / "service-keys", matrix_file=matrix_file, audit_log=home / "audit.log"
        ),
        peers=peers or {},
        llm=llm or LLMConfig(provider="ai-stack" if service == "main-backend" else "offline", timeout_s=5),
    )


@dataclass
class Pair:
    backend: ServiceConfig
    ai_stack: ServiceConfig
    ai_home: Path


def _deploy_keys(tmp_path: Path, *, backend_master: bytes | None = None) -> None:
    """Deploy main-backend's and ai-stack's key dirs; main-backend may get a master ai-stack does not know."""
    masters = {s: generate_master_key() for s in ("main-backend", "ai-stack", "browser-service")}
    keyring = ControllerKeyring({s: ServiceKeys(current=1, keys={1: k}) for s, k in masters.items()})
    services = load_matrix()
    write_key_dir(tmp_path / "ai-stack" / "service-keys", machine_key_files(keyring, services, "ai-stack"))
    if backend_master is not None:
        keyring = ControllerKeyring({**keyring.services, "main-backend": ServiceKeys(1, {1: backend_master})})
    write_key_dir(
        tmp_path / "main-backend" / "service-keys", machine_key_files(keyring, services, "main-backend")
    )


@pytest.fixture
async def ai_stack_url(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[str]:
    _deploy_keys(tmp_path)
    config = _service_config("ai-stack", tmp_path / "ai-stack", redis_server.url)
    app = ServiceAuthEnforcementMiddleware(create_app(config), config)
    async with serving(app) as url:
        yield url


def _backend(tmp_path: Path, redis_server: RedisServer, url: str) -> ServiceConfig:
    return _service_config(
        "main-backend", tmp_path / "main-backend", redis_server.url, peers={"ai-stack": url}
    )


async def test_complete_is_signed_verified_and_audited(
    tmp_path: Path, redis_server: RedisServer, ai_stack_url: str
) -> None:
    provider = AiStackProvider.from_config(_backend(tmp_path, redis_server, ai_stack_url))
    try:
        completion = await provider.complete(MESSAGES, model=PHI3, max_tokens=64)
        streamed = [chunk async for chunk in provider.stream(MESSAGES, model=PHI3, max_tokens=64)]
    finally:
        await provider.aclose()
    assert completion.text.startswith("[offline-echo]")
    assert "Hello from main-backend" in completion.text
    assert completion.provider.startswith("ai-stack (offline-echo")
    # Streamed through POST /api/inference/stream: the offline stand-in's chunks (a word each), not one piece.
    assert len(streamed) > 1
    assert "".join(streamed) == completion.text
    for path in ("/api/inference", "/api/inference/stream"):
        record = wait_for_audit(tmp_path / "ai-stack" / "audit.log", caller="main-backend", path=path)
        assert (record["decision"], record["keyid"], record["phase"]) == (
            "allow",
            "main-backend:v1",
            "enforcement",
        )


async def test_make_provider_builds_it_through_the_registration_hook(
    tmp_path: Path, redis_server: RedisServer, ai_stack_url: str
) -> None:
    config = _backend(tmp_path, redis_server, ai_stack_url)
    provider = make_provider(config.llm, extra_builders=ai_stack_builders(config))
    try:
        assert isinstance(provider, AiStackProvider)
        assert (await provider.complete(MESSAGES, model=PHI3, max_tokens=8)).text.startswith("[offline-echo]")
    finally:
        await provider.aclose()


async def test_wrong_key_is_refused_and_says_where_to_look(tmp_path: Path, redis_server: RedisServer) -> None:
    _deploy_keys(tmp_path, backend_master=generate_master_key())
    ai_config = _service_config("ai-stack", tmp_path / "ai-stack", redis_server.url)
    async with serving(ServiceAuthEnforcementMiddleware(create_app(ai_config), ai_config)) as url:
        provider = AiStackProvider.from_config(_backend(tmp_path, redis_server, url))
        with pytest.raises(LLMError, match=r"HTTP 401: unauthorized: bad_signature.*check the service keys"):
            await provider.complete(MESSAGES, model=PHI3, max_tokens=8)
        await provider.aclose()


async def test_unreachable_ai_stack_is_unavailable(tmp_path: Path, redis_server: RedisServer) -> None:
    _deploy_keys(tmp_path)
    provider = AiStackProvider.from_config(
        _backend(tmp_path, redis_server, f"http://127.0.0.1:{free_port()}")
    )
    with pytest.raises(LLMUnavailableError, match="ai-stack"):
        await provider.complete(MESSAGES, model=PHI3, max_tokens=8)
    await provider.aclose()


# --- stream: chunk by chunk, and every way it can fail ------------------------------------------------------


@contextlib.asynccontextmanager
async def _provider_for(
    tmp_path: Path,
    redis_server: RedisServer,
    *,
    llm: LLMConfig | None = None,
    fake: LLMProvider | None = None,
    matrix_file: Path = MATRIX_FILE,
) -> AsyncIterator[AiStackProvider]:
    """main-backend's provider, calling an ai-stack (enforcement phase) whose runtime is `llm` or `fake`."""
    _deploy_keys(tmp_path)
    config = _service_config(
        "ai-stack", tmp_path / "ai-stack", redis_server.url, llm=llm, matrix_file=matrix_file
    )
    app = ServiceAuthEnforcementMiddleware(create_app(config, provider=fake), config)
    async with serving(app) as url:
        provider = AiStackProvider.from_config(_backend(tmp_path, redis_server, url))
        try:
            yield provider
        finally:
            await provider.aclose()


async def _collect(
    provider: AiStackProvider, received: list[str], messages: Sequence[Message] = MESSAGES
) -> None:
    async for chunk in provider.stream(messages, model=PHI3, max_tokens=64):
        received.append(chunk)


@pytest.fixture
def runtime() -> Iterator[FakeLLMRuntime]:
    with running_fake_llm_runtime() as fake:
        yield fake


def _ollama(runtime: FakeLLMRuntime) -> LLMConfig:
    return LLMConfig(provider="ollama", base_url=runtime.url, timeout_s=5)


async def test_stream_yields_each_chunk_as_ai_stack_sends_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    fake = GatedFakeLLM("first", [" second", " third"])
    async with _provider_for(tmp_path, redis_server, fake=fake) as provider:
        chunks = provider.stream(MESSAGES, model=PHI3, max_tokens=64)
        # A bound on a hang, not a timed assertion: a buffered stream would never yield before the gate opens.
        async with asyncio.timeout(10):
            first = await anext(chunks)
        fake.gate.set()
        rest = [chunk async for chunk in chunks]
    assert (first, rest) == ("first", [" second", " third"])


async def test_runtime_failing_mid_stream_is_an_llm_error(
    tmp_path: Path, redis_server: RedisServer, runtime: FakeLLMRuntime
) -> None:
    runtime.script = Script(chunks=["a", "b", "c"], error_after_chunks=1)
    received: list[str] = []
    async with _provider_for(tmp_path, redis_server, llm=_ollama(runtime)) as provider:
        with pytest.raises(LLMError, match=r"failed mid-stream: llm_error: .*out of memory") as failed:
            await _collect(provider, received)
    assert not isinstance(failed.value, LLMUnavailableError)
    assert received == ["a"]


async def test_runtime_cut_mid_stream_is_unavailable(
    tmp_path: Path, redis_server: RedisServer, runtime: FakeLLMRuntime
) -> None:
    runtime.script = Script(chunks=["a", "b"], cut_stream=True)
    received: list[str] = []
    async with _provider_for(tmp_path, redis_server, llm=_ollama(runtime)) as provider:
        with pytest.raises(LLMUnavailableError, match="failed mid-stream: llm_unavailable"):
            await _collect(provider, received)
    assert received == ["a", "b"]


@pytest.mark.parametrize(
    ("script", "error", "text"),
    [
        (Script(status=500, raw_body=b'{"error": "model not loaded"}'), LLMUnavailableError, "HTTP 503"),
        # ai-stack answers a runtime's 400 with 502, which `complete` already counts as unavailable.
        (
            Script(status=400, raw_body=b'{"error": "bad request"}'),
            LLMUnavailableError,
            "HTTP 502: llm_error",
        ),
    ],
)
async def test_http_errors_map_as_complete_maps_them(
    tmp_path: Path,
    redis_server: RedisServer,
    runtime: FakeLLMRuntime,
    script: Script,
    error: type[LLMError],
    text: str,
) -> None:
    runtime.script = script
    async with _provider_for(tmp_path, redis_server, llm=_ollama(runtime)) as provider:
        with pytest.raises(error, match=f"POST /api/inference/stream answered {text}") as streamed:
            await _collect(provider, [])
        with pytest.raises(error) as completed:
            await provider.complete(MESSAGES, model=PHI3, max_tokens=8)
    assert type(streamed.value) is type(completed.value) is error


async def test_a_prompt_too_large_is_refused_before_the_stream(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    huge = [Message("user", "word " * 20_000)]
    async with _provider_for(tmp_path, redis_server) as provider:
        with pytest.raises(LLMError, match="HTTP 413: context_too_large") as refused:
            await _collect(provider, [], huge)
    assert not isinstance(refused.value, LLMUnavailableError)


async def test_without_the_matrix_grant_the_stream_is_refused_and_says_where_to_look(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    ungranted = tmp_path / "services.yml"
    text = MATRIX_FILE.read_text(encoding="utf-8")
    grant = "        - {methods: [POST], path: /api/inference/stream, max_body_bytes: 2097152}\n"
    assert grant in text
    ungranted.write_text(text.replace(grant, ""), encoding="utf-8")
    async with _provider_for(tmp_path, redis_server, matrix_file=ungranted) as provider:
        with pytest.raises(LLMError, match=r"HTTP 403: forbidden: not_granted.*matrix grant"):
            await _collect(provider, [])
        assert (await provider.complete(MESSAGES, model=PHI3, max_tokens=8)).text  # still granted


async def test_stream_from_an_unreachable_ai_stack_is_unavailable(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    _deploy_keys(tmp_path)
    provider = AiStackProvider.from_config(
        _backend(tmp_path, redis_server, f"http://127.0.0.1:{free_port()}")
    )
    with pytest.raises(LLMUnavailableError, match="ConnectError"):
        await _collect(provider, [])
    await provider.aclose()


def test_from_config_needs_a_peer_and_keys(tmp_path: Path) -> None:
    _deploy_keys(tmp_path)
    with pytest.raises(ConfigError, match=r"peers\['ai-stack'\]"):
        AiStackProvider.from_config(_service_config("main-backend", tmp_path / "main-backend", "redis://x"))
    no_security = ServiceConfig(
        service_id="main-backend", listen=ListenConfig(port=1), peers={"ai-stack": "http://127.0.0.1:1"}
    )
    with pytest.raises(ConfigError, match="no security section"):
        AiStackProvider.from_config(no_security)


# --- pure parts -------------------------------------------------------------------------------------------


def test_error_detail_reads_both_error_shapes() -> None:
    assert (
        error_detail(b'{"error": "context_too_large", "detail": "too long"}') == "context_too_large: too long"
    )
    assert error_detail(b'{"error": "forbidden", "detail": "not_granted"}') == "forbidden: not_granted"
    assert error_detail(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert error_detail(b"") == "(empty body)"


def test_status_errors() -> None:
    assert isinstance(status_error(503, b"{}"), LLMUnavailableError)
    assert isinstance(status_error(429, b"{}"), LLMUnavailableError)
    refused = status_error(403, b'{"error": "forbidden", "detail": "not_granted"}')
    assert not isinstance(refused, LLMUnavailableError)
    assert "matrix" in str(refused)


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"text": 1, "model": "m"}', b'{"text": "t"}'])
def test_unusable_answers(body: bytes) -> None:
    with pytest.raises(LLMResponseError):
        parse_completion(body)


def test_completion_fields() -> None:
    completion = parse_completion(
        b'{"text": "hi", "model": "m", "provider": "ollama", "prompt_tokens": 3, "completion_tokens": true}'
    )
    assert (completion.text, completion.model, completion.provider) == ("hi", "m", "ai-stack (ollama)")
    assert (completion.prompt_tokens, completion.completion_tokens) == (3, None)


def test_stream_lines() -> None:
    assert stream_line_text('{"type": "chunk", "text": "hi"}') == "hi"
    assert stream_line_text('{"type": "done", "model": "m"}') is None
    assert stream_line_text("") == ""
    assert stream_line_text('{"type": "heartbeat"}') == ""  # a newer ai-stack's line type: skipped
    with pytest.raises(LLMUnavailableError, match="llm_unavailable: runtime down"):
        stream_line_text('{"type": "error", "error": "llm_unavailable", "detail": "runtime down"}')
    with pytest.raises(LLMError, match="llm_error: bad") as failed:
        stream_line_text('{"type": "error", "error": "llm_error", "detail": "bad"}')
    assert not isinstance(failed.value, LLMUnavailableError)


@pytest.mark.parametrize(
    "line", ["nope", "[]", '{"text": "t"}', '{"type": "chunk"}', '{"type": "chunk", "text": 1}']
)
def test_malformed_stream_lines(line: str) -> None:
    with pytest.raises(LLMResponseError):
        stream_line_text(line)


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_reply_chunks_stop_at_done_and_a_stream_without_done_was_cut() -> None:
    chunk = '{"type": "chunk", "text": "%s"}'
    done = '{"type": "done"}'
    assert [c async for c in reply_chunks(_lines(chunk % "a", "", chunk % "", chunk % "b", done))] == [
        "a",
        "b",
    ]
    received: list[str] = []

    async def collect() -> None:
        async for c in reply_chunks(_lines(chunk % "a")):
            received.append(c)

    with pytest.raises(LLMUnavailableError, match="ended before its 'done' line"):
        await collect()
    assert received == ["a"]
