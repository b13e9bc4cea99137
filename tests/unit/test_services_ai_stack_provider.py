"""The "ai-stack" LLM provider: main-backend's signed calls to a real ai-stack app behind the enforcement
middleware, over real HTTP on loopback, with key files laid out as the deployment lays them out."""

from __future__ import annotations

from collections.abc import AsyncIterator
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

from autobot.config import ConfigError, ListenConfig, LLMConfig, RedisConfig, SecurityConfig, ServiceConfig
from autobot.context import ModelRegistry
from autobot.llm import LLMError, LLMResponseError, LLMUnavailableError, make_provider
from autobot.llm.ai_stack import (
    AiStackProvider,
    ai_stack_builders,
    error_detail,
    parse_completion,
    status_error,
)
from autobot.messages import Message
from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware
from autobot.security.distribution import machine_key_files
from autobot.security.keyring_file import ControllerKeyring, ServiceKeys
from autobot.security.keys import generate_master_key
from autobot.services.ai_stack import create_app

PHI3 = ModelRegistry.load().get("phi3:mini")
MESSAGES = [Message("system", "Be brief."), Message("user", "Hello from main-backend")]


def _service_config(
    service: str, home: Path, redis_url: str, *, peers: dict[str, str] | None = None
) -> ServiceConfig:
    return ServiceConfig(
        service_id=service,  # type: ignore[arg-type]
        listen=ListenConfig(port=8001),
        redis=RedisConfig(url=redis_url),
        security=SecurityConfig(
            keys_dir=home / "service-keys", matrix_file=MATRIX_FILE, audit_log=home / "audit.log"
        ),
        peers=peers or {},
        llm=LLMConfig(provider="ai-stack" if service == "main-backend" else "offline", timeout_s=5),
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
    assert streamed == [completion.text]
    record = wait_for_audit(tmp_path / "ai-stack" / "audit.log", caller="main-backend", path="/api/inference")
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
