"""The model registry: the packaged file, deployed overrides merged by model, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobot.context import (
    ContextWindowManager,
    HeuristicTokenizer,
    ModelRegistry,
    ModelRegistryError,
    ModelSpec,
    TokenizerFile,
    UnknownModelError,
)
from autobot.messages import Message

# name: (context_window_tokens, max_output_tokens, message_limit, history_token_budget)
EXPECTED = {
    "qwen2.5-coder-7b-instruct": (4096, 2048, 20, 1548),
    "qwen2.5-coder-14b-instruct": (8192, 4096, 30, 3296),
    "llama-3.2-3b-instruct": (4096, 2048, 15, 1648),
    "phi-3-mini-4k-instruct": (4096, 2048, 15, 1748),
    "llama3.1:8b": (131072, 4096, 60, 16384),
    "llama3.2:3b": (131072, 4096, 60, 16384),
    "mistral:7b": (32768, 4096, 50, 12288),
    "qwen2.5:7b": (32768, 4096, 50, 12288),
    "phi3:mini": (4096, 1024, 20, 2048),
    "gemma2:9b": (8192, 2048, 30, 4096),
}

GOOD_ENTRY = """
    context_window_tokens: 2048
    max_output_tokens: 512
    message_limit: 8
    history_token_budget: 1024
    tokenizer: {kind: heuristic, chars_per_token: 3.5, safety_margin: 0.2}
"""


def _write(tmp_path: Path, text: str, name: str = "models.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_registry_loads_all_models() -> None:
    registry = ModelRegistry.load()
    assert set(registry.names()) == set(EXPECTED)
    assert registry.default_name == "qwen2.5-coder-7b-instruct"
    assert "mistral:7b" in registry
    assert "gpt-4" not in registry


@pytest.mark.parametrize(("name", "limits"), sorted(EXPECTED.items()))
def test_each_model_has_its_limits(name: str, limits: tuple[int, int, int, int]) -> None:
    spec = ModelRegistry.load().get(name)
    assert spec.name == name
    assert (
        spec.context_window_tokens,
        spec.max_output_tokens,
        spec.message_limit,
        spec.history_token_budget,
    ) == limits
    assert spec.tokenizer == HeuristicTokenizer(chars_per_token=4.0, safety_margin=0.10)
    assert (spec.requested_name, spec.fell_back) == (name, False)
    assert spec.prompt_token_budget == limits[0] - limits[1]
    assert spec.history_token_budget + spec.max_output_tokens <= spec.context_window_tokens


def test_message_limit_differs_per_model() -> None:
    manager = ContextWindowManager(ModelRegistry.load())
    assert manager.fetch_limit("llama-3.2-3b-instruct") == 15
    assert manager.fetch_limit("qwen2.5-coder-14b-instruct") == 30
    assert manager.fetch_limit("llama3.1:8b") == 60


@pytest.mark.parametrize("asked", ["gpt-4o", "", "QWEN2.5:7B"])
def test_unknown_model_falls_back_to_default(asked: str) -> None:
    registry = ModelRegistry.load()
    spec = registry.get(asked)
    assert spec.name == registry.default_name
    assert spec.requested_name == asked
    assert spec.fell_back is True
    default = registry.get(registry.default_name)
    assert spec.context_window_tokens == default.context_window_tokens
    assert default.fell_back is False


@pytest.mark.parametrize("asked", ["gpt-4o", "", "QWEN2.5:7B"])
def test_require_refuses_an_unknown_model_and_lists_the_known_ones(asked: str) -> None:
    registry = ModelRegistry.load()
    with pytest.raises(UnknownModelError) as caught:
        registry.require(asked)
    assert caught.value.known == registry.names()
    assert registry.require(None) == registry.get(registry.default_name)
    assert registry.require("phi3:mini").name == "phi3:mini"


def test_no_model_means_default() -> None:
    spec = ModelRegistry.load().get(None)
    assert (spec.name, spec.requested_name, spec.fell_back) == ("qwen2.5-coder-7b-instruct", None, True)


def test_deployed_file_merges_by_model(tmp_path: Path) -> None:
    deployed = _write(
        tmp_path,
        f"""
default: tinyllama:1.1b
models:
  mistral:7b:
    context_window_tokens: 8192
    max_output_tokens: 1024
    message_limit: 12
    history_token_budget: 4096
    tokenizer: {{kind: heuristic, chars_per_token: 3.0, safety_margin: 0.25}}
  tinyllama:1.1b:{GOOD_ENTRY}""",
    )
    registry = ModelRegistry.load(deployed)
    assert set(registry.names()) == set(EXPECTED) | {"tinyllama:1.1b"}
    assert registry.default_name == "tinyllama:1.1b"
    mistral = registry.get("mistral:7b")
    # The deployed entry replaces the packaged one whole.
    assert (mistral.context_window_tokens, mistral.max_output_tokens, mistral.message_limit) == (
        8192,
        1024,
        12,
    )
    assert mistral.tokenizer == HeuristicTokenizer(3.0, 0.25)
    assert registry.get("gemma2:9b").context_window_tokens == 8192  # untouched packaged entry
    assert registry.get("unknown").name == "tinyllama:1.1b"
    assert str(deployed) in registry.source


def test_deployed_file_may_only_change_the_default(tmp_path: Path) -> None:
    registry = ModelRegistry.load(_write(tmp_path, "default: gemma2:9b\n"))
    assert registry.default_name == "gemma2:9b"
    assert set(registry.names()) == set(EXPECTED)


def test_empty_deployed_file_changes_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry.load(_write(tmp_path, ""))
    assert registry.default_name == "qwen2.5-coder-7b-instruct"
    assert set(registry.names()) == set(EXPECTED)


def test_config_default_model_wins(tmp_path: Path) -> None:
    deployed = _write(tmp_path, "default: gemma2:9b\n")
    assert ModelRegistry.load(deployed, default_model="phi3:mini").default_name == "phi3:mini"
    with pytest.raises(ModelRegistryError, match="default model 'nope' is not defined"):
        ModelRegistry.load(deployed, default_model="nope")


def test_adding_a_model_is_adding_it_to_the_file(tmp_path: Path) -> None:
    deployed = _write(tmp_path, f"models:\n  granite3:2b:{GOOD_ENTRY}")
    manager = ContextWindowManager(ModelRegistry.load(deployed))
    assert manager.fetch_limit("granite3:2b") == 8
    history = [Message("user", "q"), Message("assistant", "a")] * 10
    window = manager.build("granite3:2b", None, history, Message("user", "new"))
    assert window.model.name == "granite3:2b"
    assert len(window.messages) == 8 + 1


def test_tokenizer_path_is_relative_to_the_registry_file(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    deployed = _write(
        tmp_path,
        """
models:
  local:7b:
    context_window_tokens: 4096
    max_output_tokens: 1024
    message_limit: 10
    history_token_budget: 2048
    tokenizer: {kind: file, path: tok/tokenizer.json}
""",
    )
    spec = ModelRegistry.load(deployed).get("local:7b")
    assert spec.tokenizer == TokenizerFile(tmp_path / "tok" / "tokenizer.json")


def _entry(old: str, new: str) -> str:
    """A one-model registry whose only entry is GOOD_ENTRY with one edit."""
    assert old in GOOD_ENTRY
    return "models:\n  m1:" + GOOD_ENTRY.replace(old, new)


INVALID = [
    ("models: [\n", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping, not list"),
    ("defualt: x\n", "unknown top-level keys ['defualt']"),
    ("models: []\n", "models must be a mapping"),
    ("default: 7\n", "default must be a model name"),
    ("default: missing:1b\n", "default model 'missing:1b' is not defined"),
    ("models:\n  m1:\n    context_window_tokens: 4096\n", "model 'm1': max_output_tokens: Field required"),
    (
        _entry("context_window_tokens: 2048", "context_window_tokens: -2048"),
        "model 'm1': context_window_tokens must be a positive",
    ),
    (
        _entry("context_window_tokens: 2048", 'context_window_tokens: "2048"'),
        "model 'm1': context_window_tokens: Input should be",
    ),
    (
        _entry("message_limit: 8", "message_limit: true"),
        "model 'm1': message_limit: Input should be a valid int",
    ),
    (_entry("max_output", "max_ouput"), "max_ouput_tokens: Extra inputs are not permitted"),
    (
        _entry("budget: 1024", "budget: 1600"),
        "model 'm1': history_token_budget (1600) + max_output_tokens (512) = 2112 exceeds "
        "context_window_tokens (2048)",
    ),
    (_entry("heuristic", "tiktoken"), "model 'm1': tokenizer: Input tag 'tiktoken'"),
    (
        _entry("chars_per_token: 3.5", "chars_per_token: 0"),
        "model 'm1': chars_per_token must be a positive number",
    ),
    (_entry("safety_margin: 0.2", "safety_margin: 1.5"), "model 'm1': safety_margin must be between 0 and 1"),
    (
        _entry(
            "{kind: heuristic, chars_per_token: 3.5, safety_margin: 0.2}", "{kind: file, path: no/t.json}"
        ),
        "model 'm1': tokenizer file",
    ),
    (f"models:\n  m1:{GOOD_ENTRY}  m1:{GOOD_ENTRY}", "duplicate key 'm1'"),
    (f"models:\n  7:{GOOD_ENTRY}", "model names must be non-empty strings, not 7"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_files_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ModelRegistryError) as caught:
        ModelRegistry.load(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_deployed_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelRegistryError, match=r"cannot read model registry .*absent\.yml"):
        ModelRegistry.load(tmp_path / "absent.yml")


def test_registry_error_is_a_value_error() -> None:
    assert issubclass(ModelRegistryError, ValueError)


def test_model_spec_validates_itself() -> None:
    heuristic = HeuristicTokenizer(4.0, 0.1)
    with pytest.raises(ValueError, match="message_limit must be a positive integer"):
        ModelSpec("m", 4096, 1024, 0, 2048, heuristic)
    with pytest.raises(ValueError, match="exceeds context_window_tokens"):
        ModelSpec("m", 4096, 2048, 10, 3000, heuristic)
    with pytest.raises(ValueError, match="max_output_tokens must be a positive integer"):
        ModelSpec("m", 4096, True, 10, 3000, heuristic)


def test_registry_refuses_inconsistent_construction() -> None:
    spec = ModelSpec("a", 4096, 1024, 10, 2048, HeuristicTokenizer(4.0, 0.1))
    with pytest.raises(ModelRegistryError, match="default model 'b' is not defined"):
        ModelRegistry({"a": spec}, "b")
    with pytest.raises(ModelRegistryError, match="entry 'x' holds a spec named 'a'"):
        ModelRegistry({"x": spec}, "x")
