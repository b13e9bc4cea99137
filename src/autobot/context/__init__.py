"""Model-aware context windows: the model registry, token counters and the window builder."""

from autobot.context.registry import ModelRegistry, ModelRegistryError, ModelSpec, UnknownModelError
from autobot.context.tokens import (
    HeuristicCounter,
    HeuristicTokenizer,
    TokenCounter,
    TokenizerFile,
    TokenizerFileCounter,
    TokenizerLoadError,
    make_counter,
)
from autobot.context.window import ContextTooLargeError, ContextWindowManager, Window

__all__ = [
    "ContextTooLargeError",
    "ContextWindowManager",
    "HeuristicCounter",
    "HeuristicTokenizer",
    "ModelRegistry",
    "ModelRegistryError",
    "ModelSpec",
    "TokenCounter",
    "TokenizerFile",
    "TokenizerFileCounter",
    "TokenizerLoadError",
    "UnknownModelError",
    "Window",
    "make_counter",
]
