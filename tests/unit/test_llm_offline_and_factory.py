"""The offline development stand-in and the provider factory."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from pathlib import Path

import pytest
from tests.unit.llm_runtime_fakes import running_fake_llm_runtime

from autobot.config import ConfigError, LLMConfig
from autobot.context import ModelRegistry
from autobot.llm import LLMProvider, make_provider
from autobot.llm.offline import OfflineEchoProvider
from autobot.llm.ollama import OllamaProvider
from autobot.llm.openai_compat import OpenAICompatProvider
from autobot.messages import Message

SPEC = ModelRegistry.load().get(None)
WINDOW = [
    Message("system", "You are AutoBot."),
    Message("user", "first question"),
    Message("assistant", "first answer"),
    Message("user", "How   do I rotate\nthe service keys without downtime on all six machines, please?"),
]


async def test_offline_reply_says_what_it_is_and_echoes_a_digest() -> None:
    llm = OfflineEchoProvider()
    completion = await llm.complete(WINDOW, model=SPEC, max_tokens=100)
    assert llm.name == "offline-echo (not a language model)"
    assert completion.provider == llm.name
    text = completion.text
    assert "offline development stand-in, not a language model" in text
    assert "4 message(s)" in text
    last = WINDOW[-1].content
    assert hashlib.sha256(last.encode()).hexdigest()[:12] in text
    assert f"{len(last)} characters" in text
    assert '"How do I rotate the service keys without downtime on all ..."' in text
    assert (completion.prompt_tokens, completion.completion_tokens) == (None, None)


async def test_offline_is_deterministic_and_streams_the_same_text() -> None:
    llm = OfflineEchoProvider()
    first = await llm.complete(WINDOW, model=SPEC, max_tokens=100)
    second = await llm.complete(list(WINDOW), model=SPEC, max_tokens=100)
    chunks = [c async for c in llm.stream(WINDOW, model=SPEC, max_tokens=100)]
    assert first == second
    assert len(chunks) > 1
    assert "".join(chunks) == first.text
    other = await llm.complete([Message("user", "something else")], model=SPEC, max_tokens=100)
    assert other.text != first.text
    assert "1 message(s)" in other.text


async def test_offline_stream_is_paced_so_a_reader_sees_it_grow() -> None:
    # Read the stream and, concurrently, count the event-loop turns between chunks: with a pace the
    # provider waits on the loop's clock between chunks (other requests run meanwhile), without one it
    # only yields. Turn counts, not wall-clock times, so the assertion holds on a loaded machine.
    async def turns_between_chunks(llm: OfflineEchoProvider) -> list[int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        seen: list[int] = []
        async for _ in llm.stream(WINDOW, model=SPEC, max_tokens=100):
            seen.append(ticks)
        stop.set()
        await task
        return [b - a for a, b in itertools.pairwise(seen)]

    paced = await turns_between_chunks(OfflineEchoProvider(chunk_delay_s=0.02))
    unpaced = await turns_between_chunks(OfflineEchoProvider())
    # The 1 ms ticker is always due before the 20 ms pace, so it runs at least once between paced chunks
    # (about 20 times on a quiet machine); unpaced, it can run at most once per chunk (one loop turn).
    assert min(paced) >= 1
    assert sorted(paced)[len(paced) // 2] >= 2
    assert max(unpaced) <= 1
    paced_text = "".join(
        [c async for c in OfflineEchoProvider(chunk_delay_s=0.001).stream(WINDOW, model=SPEC, max_tokens=100)]
    )
    assert paced_text == (await OfflineEchoProvider().complete(WINDOW, model=SPEC, max_tokens=100)).text


def test_offline_pace_comes_from_the_llm_config_with_a_20_ms_default() -> None:
    default = make_provider(LLMConfig())
    assert isinstance(default, OfflineEchoProvider)
    assert default.chunk_delay_s == 0.02
    configured = make_provider(LLMConfig(offline_chunk_delay_s=0))
    assert isinstance(configured, OfflineEchoProvider)
    assert configured.chunk_delay_s == 0


@pytest.mark.parametrize("bad", [-0.01, 1.5, "fast"])
def test_offline_pace_refuses_nonsense(bad: object) -> None:
    with pytest.raises(ValueError, match="offline_chunk_delay_s"):
        LLMConfig.model_validate({"offline_chunk_delay_s": bad})
    with pytest.raises(ValueError, match="chunk_delay_s"):
        OfflineEchoProvider(chunk_delay_s=-1)


async def test_offline_without_user_message() -> None:
    text = (await OfflineEchoProvider().complete([Message("system", "s")], model=SPEC, max_tokens=5)).text
    assert "no user message" in text


async def test_offline_costs_next_to_no_cpu() -> None:
    llm = OfflineEchoProvider()
    window = [Message("user", "x" * 20_000)] * 50
    start = time.process_time()
    for _ in range(500):
        await llm.complete(window, model=SPEC, max_tokens=100)
    assert time.process_time() - start < 1.0  # ~20 us per reply here; a real model takes seconds


def test_factory_builds_the_configured_provider(tmp_path: Path) -> None:
    assert isinstance(make_provider(LLMConfig()), OfflineEchoProvider)
    ollama = make_provider(LLMConfig(provider="ollama", base_url="http://127.0.0.1:11434/"))
    assert isinstance(ollama, OllamaProvider)
    assert ollama.base_url == "http://127.0.0.1:11434"
    openai = make_provider(LLMConfig(provider="openai", base_url="http://127.0.0.1:8000/v1"))
    assert isinstance(openai, OpenAICompatProvider)
    assert openai.base_url == "http://127.0.0.1:8000"


async def test_factory_reads_the_api_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "llm.key"
    key_file.write_text("sk-from-file\n")
    with running_fake_llm_runtime() as runtime:
        llm = make_provider(LLMConfig(provider="openai", base_url=runtime.url, api_key_file=key_file))
        await llm.complete(WINDOW, model=SPEC, max_tokens=5)
        await llm.aclose()
        assert runtime.last.headers["Authorization"] == "Bearer sk-from-file"


async def test_factory_timeout_reaches_the_client() -> None:
    with running_fake_llm_runtime() as runtime:
        runtime.script.delay_s = 5
        llm = make_provider(LLMConfig(provider="ollama", base_url=runtime.url, timeout_s=0.2))
        started = time.monotonic()
        with pytest.raises(Exception, match="timed out"):
            await llm.complete(WINDOW, model=SPEC, max_tokens=5)
        assert time.monotonic() - started < 2
        await llm.aclose()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (LLMConfig(provider="ollama"), "llm.base_url is required for provider 'ollama'"),
        (LLMConfig(provider="openai"), "llm.base_url is required for provider 'openai'"),
        (LLMConfig(provider="ollama", base_url="ftp://x"), "base_url must be an http"),
        (
            LLMConfig(provider="openai", base_url="http://x", api_key_file=Path("/nonexistent/llm.key")),
            "cannot read llm.api_key_file /nonexistent/llm.key",
        ),
        (LLMConfig(provider="ai-stack"), "llm.provider 'ai-stack' has no builder here"),
    ],
)
def test_factory_errors_are_clear(cfg: LLMConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make_provider(cfg)


def test_factory_refuses_an_empty_key_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        make_provider(LLMConfig(provider="openai", base_url="http://x", api_key_file=empty))


def test_factory_accepts_an_injected_builder() -> None:
    built: list[LLMConfig] = []

    def build_ai_stack(cfg: LLMConfig) -> LLMProvider:
        built.append(cfg)
        return OfflineEchoProvider()

    cfg = LLMConfig(provider="ai-stack")
    provider = make_provider(cfg, extra_builders={"ai-stack": build_ai_stack})
    assert isinstance(provider, OfflineEchoProvider)
    assert built == [cfg]
