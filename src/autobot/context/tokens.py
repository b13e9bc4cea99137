"""Token counters: what a text or a chat message costs a model, in tokens.

Two kinds, chosen per model by the registry: a real tokenizer loaded offline from a local `tokenizer.json`
(exact for that tokenizer), or a calibrated character heuristic that errs on the side of counting too many,
because undercounting silently overflows the model's window (Ollama then cuts the prompt to its tail).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer

from autobot.messages import Message

# Chat templates wrap each message in role markers: <|im_start|>user\n ... <|im_end|>\n (Qwen),
# <|start_header_id|>user<|end_header_id|>\n\n ... <|eot_id|> (Llama 3), <start_of_turn>user\n ... (Gemma):
# about five tokens in each family.
MESSAGE_OVERHEAD_TOKENS = 5
# The template also opens the reply (BOS + the assistant header) before the model writes a token.
REPLY_PRIMING_TOKENS = 5

# Calibration of the heuristic (see the field notes: chars/4 overestimates English by ~19%, underestimates
# JSON by 5-15% and CJK by 2-4x). Letters and spaces cost `chars_per_token` each; the rest is weighted apart:
# - ASCII punctuation and line breaks are mostly tokens of their own, or merge only in pairs (`":`, `},`).
_SYMBOL_TOKENS = 0.75
# - 32k-vocabulary tokenizers (Mistral, Llama 2, Phi-3) spend one token per digit.
_DIGIT_TOKENS = 1.0
# - Non-ASCII text is weighted by its UTF-8 bytes: a CJK character (3 bytes) costs 1.5 tokens, Cyrillic or an
#   accented letter (2 bytes) 1, an emoji (4 bytes) 2. Large vocabularies need fewer, byte-fallback ones more.
_NON_ASCII_BYTE_TOKENS = 0.5

_SYMBOLS = (string.punctuation + "\n\r\t").encode("ascii")
_DIGITS = string.digits.encode("ascii")


class TokenCounter(Protocol):
    """Counts tokens for one model's tokenizer."""

    def count(self, text: str) -> int:
        """Tokens of `text` alone (0 for the empty string)."""
        ...

    def count_message(self, message: Message) -> int:
        """Tokens one chat message costs in a prompt: its content plus the template's per-message overhead."""
        ...


@dataclass(frozen=True, slots=True)
class HeuristicTokenizer:
    """Registry entry: estimate tokens from characters."""

    chars_per_token: float
    safety_margin: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.chars_per_token) and self.chars_per_token > 0):
            raise ValueError(f"chars_per_token must be a positive number, not {self.chars_per_token!r}")
        if not (math.isfinite(self.safety_margin) and 0 <= self.safety_margin <= 1):
            raise ValueError(f"safety_margin must be between 0 and 1, not {self.safety_margin!r}")


@dataclass(frozen=True, slots=True)
class TokenizerFile:
    """Registry entry: count with a real tokenizer loaded from a local tokenizer.json."""

    path: Path


TokenizerSpec = HeuristicTokenizer | TokenizerFile


class TokenizerLoadError(ValueError):
    """A tokenizer.json file is missing or not a tokenizer."""


class HeuristicCounter:
    """Character-class estimate, raised by a safety margin. Cost: a few C-level passes over the text."""

    def __init__(self, chars_per_token: float, safety_margin: float) -> None:
        spec = HeuristicTokenizer(chars_per_token, safety_margin)  # validates
        self.chars_per_token = spec.chars_per_token
        self.safety_margin = spec.safety_margin

    def raw_estimate(self, text: str) -> float:
        """The estimate before the safety margin."""
        if text.isascii():
            ascii_bytes = text.encode("ascii")
            non_ascii_bytes = 0
        else:
            ascii_bytes = text.encode("ascii", "ignore")
            # surrogatepass: text decoded from JSON may hold lone surrogates; count them, don't crash on them.
            non_ascii_bytes = len(text.encode("utf-8", "surrogatepass")) - len(ascii_bytes)
        symbols = len(ascii_bytes) - len(ascii_bytes.translate(None, _SYMBOLS))
        digits = len(ascii_bytes) - len(ascii_bytes.translate(None, _DIGITS))
        plain = len(ascii_bytes) - symbols - digits
        return (
            plain / self.chars_per_token
            + symbols * _SYMBOL_TOKENS
            + digits * _DIGIT_TOKENS
            + non_ascii_bytes * _NON_ASCII_BYTE_TOKENS
        )

    def count(self, text: str) -> int:
        if not text:
            return 0
        return math.ceil(self.raw_estimate(text) * (1 + self.safety_margin))

    def count_message(self, message: Message) -> int:
        return self.count(message.content) + MESSAGE_OVERHEAD_TOKENS


class TokenizerFileCounter:
    """Exact counts from a Hugging Face `tokenizer.json`, loaded offline (no hub, no download)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            tokenizer: Any = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust side raises plain Exception for unreadable or invalid files
            raise TokenizerLoadError(f"cannot load tokenizer file {self.path}: {exc}") from exc
        # A tokenizer.json may carry truncation/padding settings (BERT-style files do); either would make
        # counts wrong, truncation silently low.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    def count(self, text: str) -> int:
        if not text:
            return 0
        try:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        except (TypeError, UnicodeEncodeError):
            # Lone surrogates cannot cross into Rust; count them as the replacement character they become.
            text = text.encode("utf-8", "replace").decode("utf-8")
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return len(encoding.ids)

    def count_message(self, message: Message) -> int:
        return self.count(message.content) + MESSAGE_OVERHEAD_TOKENS


def make_counter(spec: TokenizerSpec) -> TokenCounter:
    """The counter a registry entry asks for. Loads the tokenizer file, if any: call it at start-up."""
    if isinstance(spec, HeuristicTokenizer):
        return HeuristicCounter(spec.chars_per_token, spec.safety_margin)
    return TokenizerFileCounter(spec.path)
