"""The model registry: per-model context window, output, message and history budgets, and tokenizer.

The packaged `models.yaml` is always read. A deployed file (config `models_file`) is merged over it BY MODEL:
an entry in the deployed file replaces the packaged entry of the same name as a whole (fields are never mixed
across files, so a new context window can't end up paired with an old history budget); models only in the
deployed file are added; its `default`, when present, replaces the packaged default. Adding a model = adding
an entry to a file.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from autobot.context.tokens import HeuristicTokenizer, TokenizerFile, TokenizerSpec

PACKAGED_FILE = "models.yaml"


class ModelRegistryError(ValueError):
    """A registry file is unreadable or invalid; the message names the file and the model."""


class UnknownModelError(LookupError):
    """A request named a model the registry does not hold. `known` lists the registered names, so the
    caller can pick one; nothing is ever answered by another model in its place."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown model {name!r}; known models: {', '.join(known)}")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model's limits. `name` is the id sent to the LLM runtime."""

    name: str
    context_window_tokens: int
    max_output_tokens: int
    # The most history messages (before the new one, system prompt not counted) fetched from storage and kept.
    message_limit: int
    # The most tokens the kept history may cost (the new message and the system prompt are not part of it).
    history_token_budget: int
    tokenizer: TokenizerSpec
    # The name the caller asked for (None: none asked), and whether the default was used in its place.
    requested_name: str | None = None
    fell_back: bool = False

    def __post_init__(self) -> None:
        for field in ("context_window_tokens", "max_output_tokens", "message_limit", "history_token_budget"):
            value = getattr(self, field)
            if type(value) is not int or value <= 0:
                raise ValueError(f"{field} must be a positive integer, not {value!r}")
        if self.history_token_budget + self.max_output_tokens > self.context_window_tokens:
            raise ValueError(
                f"history_token_budget ({self.history_token_budget}) + max_output_tokens "
                f"({self.max_output_tokens}) = {self.history_token_budget + self.max_output_tokens} "
                f"exceeds context_window_tokens ({self.context_window_tokens})"
            )

    @property
    def prompt_token_budget(self) -> int:
        """Tokens the whole prompt may use once the reply's tokens are reserved."""
        return self.context_window_tokens - self.max_output_tokens


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _HeuristicEntry(_Strict):
    kind: Literal["heuristic"]
    chars_per_token: StrictFloat | StrictInt
    safety_margin: StrictFloat | StrictInt


class _FileEntry(_Strict):
    kind: Literal["file"]
    path: str = Field(min_length=1)


class _ModelEntry(_Strict):
    context_window_tokens: StrictInt
    max_output_tokens: StrictInt
    message_limit: StrictInt
    history_token_budget: StrictInt
    tokenizer: Annotated[_HeuristicEntry | _FileEntry, Field(discriminator="kind")]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: a model listed twice would otherwise silently keep the last."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` keys may legitimately be overridden by explicit ones
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)


@dataclass(frozen=True, slots=True)
class _ParsedFile:
    source: str
    default: str | None
    models: dict[str, ModelSpec]


def _format_validation(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(entry)'}: {err['msg']}" for err in exc.errors()
    )


def _tokenizer_spec(entry: _HeuristicEntry | _FileEntry, base_dir: Path | None) -> TokenizerSpec:
    if isinstance(entry, _HeuristicEntry):
        return HeuristicTokenizer(float(entry.chars_per_token), float(entry.safety_margin))
    path = Path(entry.path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path  # relative to the registry file, not to the service's working directory
    if not path.is_file():
        raise ValueError(f"tokenizer file {path} does not exist")
    return TokenizerFile(path)


def _parse(text: str, source: str, base_dir: Path | None) -> _ParsedFile:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ModelRegistryError(f"model registry {source} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ModelRegistryError(f"model registry {source} must hold a mapping, not {type(raw).__name__}")
    # `x-` keys only hold YAML anchors for the entries to share (as in compose files); other keys are typos.
    unknown = sorted(str(k) for k in raw if k not in ("default", "models") and not str(k).startswith("x-"))
    if unknown:
        raise ModelRegistryError(
            f"model registry {source}: unknown top-level keys {unknown} (allowed: default, models, x-*)"
        )
    default = raw.get("default")
    if default is not None and (not isinstance(default, str) or not default):
        raise ModelRegistryError(f"model registry {source}: default must be a model name, not {default!r}")
    entries = raw.get("models", {})
    if not isinstance(entries, dict):
        raise ModelRegistryError(f"model registry {source}: models must be a mapping of name -> settings")
    models: dict[str, ModelSpec] = {}
    for name, body in entries.items():
        if not isinstance(name, str) or not name.strip():
            raise ModelRegistryError(
                f"model registry {source}: model names must be non-empty strings, not {name!r}"
            )
        try:
            entry = _ModelEntry.model_validate(body)
            models[name] = ModelSpec(
                name=name,
                context_window_tokens=entry.context_window_tokens,
                max_output_tokens=entry.max_output_tokens,
                message_limit=entry.message_limit,
                history_token_budget=entry.history_token_budget,
                tokenizer=_tokenizer_spec(entry.tokenizer, base_dir),
                requested_name=name,
            )
        except ValidationError as exc:
            raise ModelRegistryError(
                f"model registry {source}, model {name!r}: {_format_validation(exc)}"
            ) from None
        except ValueError as exc:
            raise ModelRegistryError(f"model registry {source}, model {name!r}: {exc}") from None
    return _ParsedFile(source=source, default=default, models=models)


def _read_packaged() -> _ParsedFile:
    resource = importlib.resources.files("autobot.context").joinpath(PACKAGED_FILE)
    return _parse(resource.read_text(encoding="utf-8"), f"(packaged) {PACKAGED_FILE}", None)


def _read_file(path: Path) -> _ParsedFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelRegistryError(f"cannot read model registry {path}: {exc.strerror or exc}") from exc
    return _parse(text, str(path), path.parent)


class ModelRegistry:
    """Known models and the default used for unknown or unnamed ones."""

    def __init__(self, models: Mapping[str, ModelSpec], default: str, *, source: str = "(in memory)") -> None:
        if default not in models:
            raise ModelRegistryError(
                f"model registry {source}: default model {default!r} is not defined "
                f"(known: {', '.join(sorted(models)) or 'none'})"
            )
        for name, spec in models.items():
            if spec.name != name:
                raise ModelRegistryError(
                    f"model registry {source}: entry {name!r} holds a spec named {spec.name!r}"
                )
        self._models = dict(models)
        self._default = default
        self.source = source

    @classmethod
    def load(cls, path: Path | str | None = None, *, default_model: str | None = None) -> ModelRegistry:
        """The packaged registry, merged by model with the deployed file `path` when given.

        `default_model` (config `backend.default_model`) overrides both files' default.
        """
        packaged = _read_packaged()
        layers = [packaged]
        if path is not None:
            layers.append(_read_file(Path(path)))
        models: dict[str, ModelSpec] = {}
        default, default_source = None, packaged.source
        for layer in layers:
            models.update(layer.models)
            if layer.default is not None:
                default, default_source = layer.default, layer.source
        if default_model is not None:
            default, default_source = default_model, "(config default_model)"
        if default is None:
            raise ModelRegistryError(f"model registry {packaged.source}: no default model declared")
        return cls(
            models,
            default,
            source=" + ".join(layer.source for layer in layers) + f" [default from {default_source}]",
        )

    @property
    def default_name(self) -> str:
        return self._default

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._models))

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models[name] for name in self.names())

    def require(self, name: str | None) -> ModelSpec:
        """The spec for `name`, the default when no name is given; an unknown name raises UnknownModelError.

        What main-backend uses: a user who names a model gets that model or a clear refusal."""
        if name is None:
            return self._models[self._default]
        spec = self._models.get(name)
        if spec is None:
            raise UnknownModelError(name, self.names())
        return spec

    def get(self, name: str | None) -> ModelSpec:
        """The spec for `name`; the default for None or an unknown name, marked `fell_back=True` (ai-stack
        reports both in its answer, so its fallback is visible to the caller)."""
        spec = self._models.get(name) if name is not None else None
        if spec is not None:
            return spec
        return dataclasses.replace(self._models[self._default], requested_name=name, fell_back=True)
