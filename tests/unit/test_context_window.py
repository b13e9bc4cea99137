"""The context window: every invariant, over random conversations and random model specs, plus edge cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from autobot.context import (
    ContextTooLargeError,
    ContextWindowManager,
    HeuristicTokenizer,
    ModelRegistry,
    ModelSpec,
    TokenCounter,
    TokenizerFile,
    UnknownModelError,
    Window,
)
from autobot.context.tokens import MESSAGE_OVERHEAD_TOKENS, REPLY_PRIMING_TOKENS, TokenizerSpec, make_counter
from autobot.messages import Message

# One token per ASCII letter, no margin: costs are easy to reason about in the edge-case tests.
EXACT = HeuristicTokenizer(chars_per_token=1.0, safety_margin=0.0)


def _spec(
    context: int = 200, output: int = 50, limit: int = 10, budget: int = 100, tokenizer: TokenizerSpec = EXACT
) -> ModelSpec:
    return ModelSpec("test:1b", context, output, limit, budget, tokenizer, requested_name="test:1b")


def _manager(spec: ModelSpec) -> ContextWindowManager:
    return ContextWindowManager(ModelRegistry({spec.name: spec}, spec.name))


def _cost(text: str) -> int:
    """A message of `text` (letters only) under EXACT."""
    return len(text) + MESSAGE_OVERHEAD_TOKENS


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


def tool(text: str) -> Message:
    return Message("tool", text)


def assert_invariants(
    manager: ContextWindowManager,
    spec: ModelSpec,
    system_prompt: str | None,
    history: Sequence[Message],
    new_message: Message,
    window: Window,
) -> None:
    counter = manager.counter(spec)
    messages = window.messages
    # The system prompt is kept, first, and is the only system message.
    if system_prompt:
        assert messages[0] == Message("system", system_prompt)
        conversation = messages[1:]
    else:
        conversation = messages
    assert all(m.role != "system" for m in conversation)
    # The newest message is always there, last; the conversation opens on a user turn.
    assert conversation[-1] == new_message
    assert conversation[0].role == "user"
    # The kept history is a contiguous newest suffix: no holes, order kept.
    kept = conversation[:-1]
    assert tuple(history[len(history) - len(kept) :]) == kept
    assert window.dropped == len(history) - len(kept)
    # Budgets.
    history_tokens = sum(counter.count_message(m) for m in kept)
    assert len(kept) <= spec.message_limit
    assert len(kept) <= manager.fetch_limit(spec)
    assert history_tokens <= spec.history_token_budget
    assert window.prompt_tokens == REPLY_PRIMING_TOKENS + sum(counter.count_message(m) for m in messages)
    assert window.prompt_tokens <= spec.context_window_tokens - spec.max_output_tokens
    assert window.prompt_tokens + window.max_output_tokens <= spec.context_window_tokens
    assert window.max_output_tokens == spec.max_output_tokens
    assert window.model.name == spec.name
    # Maximal: starting at the next older user turn would break a limit (so nothing is dropped needlessly).
    start = len(history) - len(kept)
    older_user = next((i for i in range(start - 1, -1, -1) if history[i].role == "user"), None)
    if older_user is not None:
        longer = history[older_user:]
        longer_tokens = sum(counter.count_message(m) for m in longer)
        assert (
            len(longer) > spec.message_limit
            or longer_tokens > spec.history_token_budget
            or window.prompt_tokens - history_tokens + longer_tokens > spec.prompt_token_budget
        )


# -- properties ----------------------------------------------------------------------------------------------


@st.composite
def model_specs(draw: st.DrawFn) -> ModelSpec:
    context = draw(st.integers(16, 3000))
    output = draw(st.integers(1, context - 1))
    budget = draw(st.integers(1, context - output))
    limit = draw(st.integers(1, 40))
    tokenizer = HeuristicTokenizer(
        chars_per_token=draw(st.floats(0.5, 8.0)), safety_margin=draw(st.floats(0.0, 0.5))
    )
    return ModelSpec(f"random:{context}", context, output, limit, budget, tokenizer)


contents = st.one_of(
    st.text(max_size=40),  # any unicode, including CJK, emoji and combining marks
    st.text(alphabet=st.characters(codec="ascii"), max_size=600),
    st.text(alphabet="漢字かなカナ한국어", max_size=200),
    st.just(""),
)
roles = st.sampled_from(["user", "assistant", "tool"])
messages = st.builds(Message, role=roles, content=contents)
histories = st.lists(messages, max_size=60)
system_prompts = st.one_of(st.none(), st.just(""), contents)

PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(spec=model_specs(), system_prompt=system_prompts, history=histories, new_text=contents)
def test_window_invariants_hold_for_any_conversation(
    spec: ModelSpec, system_prompt: str | None, history: list[Message], new_text: str
) -> None:
    manager = _manager(spec)
    counter = manager.counter(spec)
    new_message = user(new_text)
    fixed = REPLY_PRIMING_TOKENS + counter.count_message(new_message)
    if system_prompt:
        fixed += counter.count_message(Message("system", system_prompt))
    if fixed > spec.prompt_token_budget:
        with pytest.raises(ContextTooLargeError):
            manager.admit(spec.name, system_prompt, new_message)
        with pytest.raises(ContextTooLargeError) as caught:
            manager.build(spec.name, system_prompt, history, new_message)
        assert caught.value.needed_tokens == fixed
        assert caught.value.available_tokens == spec.prompt_token_budget
        return
    # What the chat path relies on to refuse a message before storing it: `admit` decides without the
    # history, and `build` then accepts the message whatever history comes with it.
    assert manager.admit(spec.name, system_prompt, new_message) == fixed
    window = manager.build(spec.name, system_prompt, history, new_message)
    assert_invariants(manager, spec, system_prompt, history, new_message, window)


@PROPERTY_SETTINGS
@given(spec=model_specs(), system_prompt=system_prompts, history=histories, new_message=messages)
def test_replies_and_tool_results_keep_their_user_turn(
    spec: ModelSpec, system_prompt: str | None, history: list[Message], new_message: Message
) -> None:
    manager = _manager(spec)
    counter = manager.counter(spec)
    try:
        window = manager.build(spec.name, system_prompt, history, new_message)
    except ContextTooLargeError:
        # Only when what must be there does not fit: the fixed part, or a reply's user turn and what follows.
        fixed = REPLY_PRIMING_TOKENS + counter.count_message(new_message)
        if system_prompt:
            fixed += counter.count_message(Message("system", system_prompt))
        if fixed <= spec.prompt_token_budget:
            assert new_message.role != "user"
            last_user = max(i for i, m in enumerate(history) if m.role == "user")
            needed = history[last_user:]
            room = min(spec.history_token_budget, spec.prompt_token_budget - fixed)
            assert len(needed) > spec.message_limit or sum(map(counter.count_message, needed)) > room
        return
    except ValueError:
        # The only other refusal: a reply or tool result with no user turn anywhere before it.
        assert new_message.role != "user"
        assert not any(m.role == "user" for m in history)
        with pytest.raises(ValueError, match="needs a user turn"):
            manager.build(spec.name, system_prompt, history, new_message)
        return
    assert_invariants(manager, spec, system_prompt, history, new_message, window)


@settings(max_examples=100, deadline=None)
@given(spec=model_specs(), history=histories)
def test_fetching_fetch_limit_messages_changes_nothing(spec: ModelSpec, history: list[Message]) -> None:
    """Reading only the newest fetch_limit messages from storage gives the same window as reading all."""
    manager = _manager(spec)
    new_message = user("next")
    try:
        full = manager.build(spec.name, None, history, new_message)
    except ContextTooLargeError:
        return
    limit = manager.fetch_limit(spec)
    fetched = history[max(0, len(history) - limit) :]
    windowed = manager.build(spec.name, None, fetched, new_message)
    assert windowed.messages == full.messages
    assert windowed.prompt_tokens == full.prompt_tokens


# -- edge cases ----------------------------------------------------------------------------------------------


def test_empty_history() -> None:
    spec = _spec()
    window = _manager(spec).build(spec, "sys", [], user("hi"))
    assert window.messages == (Message("system", "sys"), user("hi"))
    assert window.dropped == 0
    assert window.prompt_tokens == REPLY_PRIMING_TOKENS + _cost("sys") + _cost("hi")
    assert window.max_output_tokens == 50


@pytest.mark.parametrize("system_prompt", [None, ""])
def test_no_system_prompt(system_prompt: str | None) -> None:
    spec = _spec()
    window = _manager(spec).build(spec, system_prompt, [user("a"), assistant("b")], user("c"))
    assert window.messages == (user("a"), assistant("b"), user("c"))


def test_newest_message_too_big_is_a_clear_error() -> None:
    spec = _spec(context=200, output=50)  # 150 prompt tokens
    manager = _manager(spec)
    # Exactly full: 5 (priming) + (3 + 5) system + (132 + 5) message = 150.
    window = manager.build(spec, "sys", [user("old")], user("x" * 132))
    assert window.prompt_tokens == 150
    assert window.messages == (Message("system", "sys"), user("x" * 132))
    with pytest.raises(ContextTooLargeError) as caught:
        manager.build(spec, "sys", [user("old")], user("x" * 133))
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.needed_tokens, error.available_tokens) == (151, 150)
    text = str(error)
    for fragment in (
        "'test:1b'",
        "context window 200",
        "max output 50",
        "newest message (138 tokens)",
        "151",
    ):
        assert fragment in text


def test_a_huge_system_prompt_alone_is_an_error() -> None:
    spec = _spec()
    with pytest.raises(ContextTooLargeError, match=r"system prompt \(305 tokens\)"):
        _manager(spec).build(spec, "s" * 300, [], user("hi"))


def test_history_starting_with_assistant_turns() -> None:
    spec = _spec()
    history = [assistant("welcome"), tool("lookup"), assistant("ready"), user("q1"), assistant("a1")]
    window = _manager(spec).build(spec, None, history, user("q2"))
    assert window.messages == (user("q1"), assistant("a1"), user("q2"))
    assert window.dropped == 3


def test_history_without_user_turns_keeps_only_the_new_message() -> None:
    spec = _spec()
    history = [assistant("a"), tool("t"), assistant("b")]
    window = _manager(spec).build(spec, "sys", history, user("q"))
    assert window.messages == (Message("system", "sys"), user("q"))
    assert window.dropped == 3


def test_budget_cut_never_leaves_an_orphan_reply() -> None:
    # Budget 40: q1 (7) + the 20-letter reply (25) + q2 (7) = 39 fits, the 25-letter reply before them (30)
    # does not. With budget 33 only the 20-letter reply and q2 fit, and the window must not open on the reply.
    spec = _spec(budget=40)
    history = [user("q0"), assistant("x" * 25), user("q1"), assistant("y" * 20), user("q2")]
    window = _manager(spec).build(spec, None, history, assistant("z"))
    assert window.messages == (user("q1"), assistant("y" * 20), user("q2"), assistant("z"))
    window = _manager(_spec(budget=33)).build(_spec(budget=33), None, history, user("next"))
    assert window.messages == (user("q2"), user("next"))  # a1 + q2 = 32 fit, but a1 would be an orphan


def test_tool_messages_stay_with_their_turn() -> None:
    spec = _spec()
    history = [user("weather?"), assistant("call"), tool("sunny"), assistant("It is sunny.")]
    window = _manager(spec).build(spec, "sys", history, user("thanks"))
    assert window.messages[1:] == (*history, user("thanks"))


def test_message_limit_caps_history() -> None:
    spec = _spec(limit=3)
    history = [user("a"), assistant("b"), user("c"), assistant("d"), user("e"), assistant("f")]
    window = _manager(spec).build(spec, None, history, user("g"))
    # The newest 3 are d, e, f; d is an assistant turn, so the window starts at e.
    assert window.messages == (user("e"), assistant("f"), user("g"))
    assert window.dropped == 4


def test_history_budget_caps_tokens() -> None:
    spec = _spec(budget=20)  # two 5-letter messages cost 20
    history = [user("aaaaa"), assistant("bbbbb"), user("ccccc"), assistant("ddddd")]
    window = _manager(spec).build(spec, None, history, user("e"))
    assert window.messages == (user("ccccc"), assistant("ddddd"), user("e"))


def test_prompt_budget_caps_history_when_the_new_message_is_big() -> None:
    spec = _spec(context=200, output=50, budget=100)  # prompt budget 150
    history = [user("a" * 10), assistant("b" * 10)]  # 30 tokens, within the history budget
    new = user("n" * 115)  # 5 + 120 = 125 -> 25 tokens left for history
    window = _manager(spec).build(spec, None, history, new)
    assert window.messages == (new,)  # only b (15) would fit, and it is a reply
    assert window.prompt_tokens == 125


def test_new_reply_needs_its_user_turn() -> None:
    spec = _spec(limit=2)
    manager = _manager(spec)
    with pytest.raises(ValueError, match="needs a user turn before it, and the history has none"):
        manager.build(spec, None, [assistant("a")], tool("result"))
    history = [user("q"), assistant("call a tool"), tool("r1"), assistant("again")]
    with pytest.raises(ContextTooLargeError, match="needs the history from its user turn on"):
        manager.build(spec, None, history, tool("r2"))  # 5 messages from q on, the limit is 2
    window = manager.build(spec, None, history[:2], tool("r1"))
    assert window.messages == (user("q"), assistant("call a tool"), tool("r1"))


def test_system_messages_in_history_or_as_new_message_are_refused() -> None:
    spec = _spec()
    manager = _manager(spec)
    with pytest.raises(ValueError, match=r"history\[1\] is a system message"):
        manager.build(spec, None, [user("a"), Message("system", "x")], user("b"))
    with pytest.raises(ValueError, match="new message cannot be a system message"):
        manager.build(spec, None, [], Message("system", "x"))


def test_unknown_model_uses_the_default() -> None:
    manager = ContextWindowManager(ModelRegistry.load())
    window = manager.build("gpt-17", "sys", [user("a")], user("b"))
    assert window.model.name == "qwen2.5-coder-7b-instruct"
    assert (window.model.requested_name, window.model.fell_back) == ("gpt-17", True)
    assert manager.spec("gpt-17").name == manager.spec(None).name == "qwen2.5-coder-7b-instruct"


def test_a_named_model_must_be_registered() -> None:
    manager = ContextWindowManager(ModelRegistry.load())
    assert manager.resolve(None).name == manager.registry.default_name
    assert manager.resolve("mistral:7b").name == "mistral:7b"
    with pytest.raises(UnknownModelError) as caught:
        manager.resolve("gpt-17")
    assert caught.value.name == "gpt-17"
    assert caught.value.known == manager.registry.names()
    assert "gpt-17" in str(caught.value)
    assert "mistral:7b" in str(caught.value)


def test_fetch_limit() -> None:
    manager = ContextWindowManager(ModelRegistry.load())
    assert manager.fetch_limit("qwen2.5-coder-7b-instruct") == 20
    assert manager.fetch_limit("phi3:mini") == 20
    assert manager.fetch_limit(None) == 20
    # A budget too small for message_limit messages caps it: each message costs at least its overhead.
    assert manager.fetch_limit(_spec(limit=30, budget=50)) == 50 // MESSAGE_OVERHEAD_TOKENS


class _CountingCounter:
    def __init__(self, inner: TokenCounter) -> None:
        self.inner = inner
        self.messages_counted = 0

    def count(self, text: str) -> int:
        return self.inner.count(text)

    def count_message(self, message: Message) -> int:
        self.messages_counted += 1
        return self.inner.count_message(message)


def test_a_long_history_costs_the_window_not_the_history() -> None:
    counters: list[_CountingCounter] = []

    def factory(spec: TokenizerSpec) -> TokenCounter:
        counters.append(_CountingCounter(make_counter(spec)))
        return counters[-1]

    spec = _spec(limit=10, budget=100)
    manager = ContextWindowManager(ModelRegistry({spec.name: spec}, spec.name), counter_factory=factory)
    history = [user("q"), assistant("a")] * 50_000
    window = manager.build(spec.name, "sys", history, user("new"))
    assert len(window.messages) == 1 + 10 + 1
    # The system prompt, the new message, the kept ones and the one that did not fit.
    assert counters[0].messages_counted <= 2 + 10 + 1


def test_real_tokenizer_file_drives_the_window(tmp_path: Path) -> None:
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        ["one two three four five"], trainers.WordLevelTrainer(special_tokens=["[UNK]"], show_progress=False)
    )
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    spec = _spec(budget=24, tokenizer=TokenizerFile(path))
    manager = _manager(spec)
    history = [user("one two three four five"), assistant("one two"), user("three four five six seven")]
    window = manager.build(spec, None, history, user("one"))
    # Word counts + overhead: 10, 7, 10. Budget 24 keeps the last two, which start on an assistant turn.
    assert window.messages == (user("three four five six seven"), user("one"))
    assert window.prompt_tokens == REPLY_PRIMING_TOKENS + 10 + 6
