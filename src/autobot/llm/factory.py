"""Build the configured LLM provider from a service's `llm:` config section."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from autobot.config import ConfigError, LLMConfig
from autobot.llm.base import LLMProvider
from autobot.llm.offline import OfflineEchoProvider
from autobot.llm.ollama import OllamaProvider
from autobot.llm.openai_compat import OpenAICompatProvider

ProviderBuilder = Callable[[LLMConfig], LLMProvider]


def _base_url(cfg: LLMConfig) -> str:
    if not cfg.base_url:
        raise ConfigError(f"llm.base_url is required for provider {cfg.provider!r}")
    return cfg.base_url


def _read_api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read llm.api_key_file {path}: {exc.strerror or exc}") from exc
    if not key:
        raise ConfigError(f"llm.api_key_file {path} is empty")
    return key


def _build_ollama(cfg: LLMConfig) -> LLMProvider:
    return OllamaProvider(_base_url(cfg), timeout_s=cfg.timeout_s)


def _build_openai(cfg: LLMConfig) -> LLMProvider:
    return OpenAICompatProvider(
        _base_url(cfg), timeout_s=cfg.timeout_s, api_key=_read_api_key(cfg.api_key_file)
    )


def _build_offline(cfg: LLMConfig) -> LLMProvider:
    return OfflineEchoProvider(chunk_delay_s=cfg.offline_chunk_delay_s)


BUILDERS: Mapping[str, ProviderBuilder] = {
    "ollama": _build_ollama,
    "openai": _build_openai,
    "offline": _build_offline,
}


def make_provider(
    cfg: LLMConfig, *, extra_builders: Mapping[str, ProviderBuilder] | None = None
) -> LLMProvider:
    """The provider `cfg.provider` names. `extra_builders` adds or replaces builders; the "ai-stack" provider
    (main-backend calling the ai-stack service, signed) is passed in this way by the service that has the
    signing client to give it."""
    builders = {**BUILDERS, **(extra_builders or {})}
    builder = builders.get(cfg.provider)
    if builder is None:
        raise ConfigError(
            f"llm.provider {cfg.provider!r} has no builder here (built in: {', '.join(sorted(BUILDERS))}); "
            f"pass one with make_provider(cfg, extra_builders={{{cfg.provider!r}: ...}})"
        )
    try:
        return builder(cfg)
    except ValueError as exc:
        raise ConfigError(f"llm config for provider {cfg.provider!r} is invalid: {exc}") from exc
