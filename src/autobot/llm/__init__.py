"""LLM providers: Ollama's native API, OpenAI-compatible APIs, and an offline development stand-in."""

from autobot.llm.base import Completion, LLMError, LLMProvider, LLMResponseError, LLMUnavailableError
from autobot.llm.factory import ProviderBuilder, make_provider

__all__ = [
    "Completion",
    "LLMError",
    "LLMProvider",
    "LLMResponseError",
    "LLMUnavailableError",
    "ProviderBuilder",
    "make_provider",
]
