"""The context window: which messages of a conversation go to the model, within the model's budgets.

Every endpoint builds its prompt here, so message and token limits are the same everywhere. `build` is pure:
tokenizer files are loaded when the manager is created, not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autobot.context.registry import ModelRegistry, ModelSpec
from autobot.context.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMING_TOKENS,
    TokenCounter,
    TokenizerSpec,
    make_counter,
)
from autobot.messages import Message


class ContextTooLargeError(ValueError):
    """What must be in the window (the system prompt, the newest message, and the user turn a reply needs)
    does not fit the model's budgets. `needed_tokens` > `available_tokens`, or too many messages."""

    def __init__(self, model: ModelSpec, *, needed_tokens: int, available_tokens: int, detail: str) -> None:
        self.model = model
        self.needed_tokens = needed_tokens
        self.available_tokens = available_tokens
        super().__init__(
            f"model {model.name!r} (context window {model.context_window_tokens}, max output "
            f"{model.max_output_tokens}): {detail}; shorten the message or use a model with a larger window"
        )


@dataclass(frozen=True, slots=True)
class Window:
    """The messages to send, in order (system prompt first when present), and what they cost."""

    messages: tuple[Message, ...]
    prompt_tokens: int
    max_output_tokens: int
    # History messages left out (the oldest ones).
    dropped: int
    model: ModelSpec


def _suffix_start(
    history: Sequence[Message], counter: TokenCounter, *, token_room: int, message_limit: int
) -> tuple[int, list[int]]:
    """Index where the longest newest suffix of `history` that fits both limits starts, and its message costs
    (oldest first). Only the kept messages and one more are counted, so long histories cost little."""
    costs: list[int] = []
    used = 0
    start = len(history)
    while start > 0 and len(costs) < message_limit:
        cost = counter.count_message(history[start - 1])
        if used + cost > token_room:
            break
        used += cost
        costs.append(cost)
        start -= 1
    costs.reverse()
    return start, costs


def _check_roles(history: Sequence[Message], new_message: Message) -> None:
    """System messages come only as the system prompt: not in history, not as the new message."""
    if new_message.role == "system":
        raise ValueError("the new message cannot be a system message; pass it as system_prompt")
    for index, message in enumerate(history):
        if message.role == "system":
            raise ValueError(f"history[{index}] is a system message; pass the system prompt separately")


def _first_user_turn(history: Sequence[Message], start: int) -> int:
    """Never open on an orphaned assistant or tool reply: the index of the first user turn from `start` on
    (len(history) when there is none)."""
    while start < len(history) and history[start].role != "user":
        start += 1
    return start


def _fixed_part_error(spec: ModelSpec, system_tokens: int, new_tokens: int) -> ContextTooLargeError:
    """What every window must hold (system prompt, newest message, reply header) exceeds the prompt budget."""
    fixed = REPLY_PRIMING_TOKENS + system_tokens + new_tokens
    return ContextTooLargeError(
        spec,
        needed_tokens=fixed,
        available_tokens=spec.prompt_token_budget,
        detail=(
            f"the system prompt ({system_tokens} tokens), the newest message ({new_tokens} tokens) "
            f"and the reply header ({REPLY_PRIMING_TOKENS}) need {fixed} tokens, but only "
            f"{spec.prompt_token_budget} are left after reserving the output"
        ),
    )


def _orphan_reply_error(
    spec: ModelSpec,
    counter: TokenCounter,
    history: Sequence[Message],
    role: str,
    fits_from: int,
    history_room: int,
) -> ValueError:
    """A reply or tool result needs the user turn it belongs to, and none fits (ContextTooLargeError, with
    what that turn and everything after it would cost) or none exists (ValueError)."""
    earlier_user = next((i for i in range(fits_from - 1, -1, -1) if history[i].role == "user"), None)
    if earlier_user is None:
        return ValueError(f"a {role} message needs a user turn before it, and the history has none")
    needed = sum(counter.count_message(m) for m in history[earlier_user:])
    return ContextTooLargeError(
        spec,
        needed_tokens=needed,
        available_tokens=history_room,
        detail=(
            f"the newest {role} message needs the history from its user turn on "
            f"({len(history) - earlier_user} messages, {needed} tokens), but at most "
            f"{spec.message_limit} messages and {history_room} tokens of history fit"
        ),
    )


class ContextWindowManager:
    """Builds model-aware context windows from a registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        counter_factory: Callable[[TokenizerSpec], TokenCounter] = make_counter,
    ) -> None:
        self.registry = registry
        # Eager, so a bad tokenizer file fails at start-up and `build` never does I/O.
        self._counters: dict[TokenizerSpec, TokenCounter] = {}
        for spec in registry:
            if spec.tokenizer not in self._counters:
                self._counters[spec.tokenizer] = counter_factory(spec.tokenizer)
        self._counter_factory = counter_factory

    def spec(self, model: str | ModelSpec | None) -> ModelSpec:
        """The spec for a model name (the default for None or unknown names), or `model` itself."""
        return model if isinstance(model, ModelSpec) else self.registry.get(model)

    def resolve(self, model: str | None) -> ModelSpec:
        """The spec for a model a user named: the default for None, UnknownModelError for an unknown name."""
        return self.registry.require(model)

    def counter(self, model: str | ModelSpec | None) -> TokenCounter:
        tokenizer = self.spec(model).tokenizer
        counter = self._counters.get(tokenizer)
        if counter is None:  # a ModelSpec from outside the registry
            counter = self._counters[tokenizer] = self._counter_factory(tokenizer)
        return counter

    def fetch_limit(self, model: str | ModelSpec | None) -> int:
        """How many of the newest history messages (excluding the new one) to read from storage at most:
        more could never enter the window, since each message costs at least its template overhead.

        It may be 0 (a history budget below one message's overhead): then read nothing; beware that Redis
        reads `LRANGE key -0 -1` as the whole list."""
        spec = self.spec(model)
        return min(spec.message_limit, spec.history_token_budget // MESSAGE_OVERHEAD_TOKENS)

    def admit(self, model: str | ModelSpec | None, system_prompt: str | None, new_message: Message) -> int:
        """Decide, before anything is stored, whether `new_message` can be answered by the model at all;
        returns the tokens every window for it costs (system prompt, the message, the reply header).

        A user message that passes is never refused by `build` for its history: history is dropped oldest
        first until it fits, possibly down to nothing. Raises ContextTooLargeError, or ValueError for a
        system message."""
        spec = self.spec(model)
        counter = self.counter(spec)
        if new_message.role == "system":
            raise ValueError("the new message cannot be a system message; pass it as system_prompt")
        system_tokens = counter.count_message(Message("system", system_prompt)) if system_prompt else 0
        new_tokens = counter.count_message(new_message)
        fixed = REPLY_PRIMING_TOKENS + system_tokens + new_tokens
        if fixed > spec.prompt_token_budget:
            raise _fixed_part_error(spec, system_tokens, new_tokens)
        return fixed

    def build(
        self,
        model: str | ModelSpec | None,
        system_prompt: str | None,
        history: Sequence[Message],
        new_message: Message,
    ) -> Window:
        """The window for `new_message` after `history` (oldest first, no system messages).

        Keeps the system prompt (None or "" = none) and the newest message, then the longest contiguous newest
        suffix of history within the history token budget, the message limit and the prompt budget (context
        window minus max output), trimmed so that the first message after the system prompt is a user turn.
        Raises ContextTooLargeError when the system prompt and the newest message alone do not fit, and
        ValueError for a system message in history or as the new message.
        """
        spec = self.spec(model)
        counter = self.counter(spec)
        _check_roles(history, new_message)
        fixed = self.admit(spec, system_prompt, new_message)
        system = (Message("system", system_prompt),) if system_prompt else ()

        history_room = min(spec.history_token_budget, spec.prompt_token_budget - fixed)
        fits_from, costs = _suffix_start(
            history, counter, token_room=history_room, message_limit=spec.message_limit
        )
        start = _first_user_turn(history, fits_from)
        if new_message.role != "user" and start == len(history):
            raise _orphan_reply_error(spec, counter, history, new_message.role, fits_from, history_room)

        return Window(
            messages=(*system, *history[start:], new_message),
            prompt_tokens=fixed + sum(costs[start - fits_from :]),
            max_output_tokens=spec.max_output_tokens,
            dropped=start,
            model=spec,
        )
