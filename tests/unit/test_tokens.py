"""Token counters: the heuristic's calibration against a real BPE tokenizer, and the tokenizer.json counter.

No tokenizer is downloaded: the tests train real ones with the `tokenizers` library and save them as
tokenizer.json files, exactly the format a deployment points the registry at.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from autobot.context import (
    HeuristicCounter,
    HeuristicTokenizer,
    TokenizerFile,
    TokenizerFileCounter,
    TokenizerLoadError,
    make_counter,
)
from autobot.context.tokens import MESSAGE_OVERHEAD_TOKENS
from autobot.messages import Message

ENGLISH = [
    "The migration runner applies each schema file inside a single transaction, so a crash halfway through "
    "leaves the database exactly as it was before. Operators can re-run the command safely; it notices which "
    "versions are already present and skips them.",
    "When the chat service starts, it opens a bounded pool of connections to Redis and reuses them for every "
    "request. If the pool is exhausted, a caller waits for a short, configured time and then receives a "
    "clear error instead of hanging forever.",
    "Context windows differ a lot between models. A small model may accept only four thousand tokens, while "
    "a newer one reads more than a hundred thousand. Sending too much text to a small model does not fail "
    "loudly: the runtime quietly drops the oldest part of the prompt.",
    "Please summarise yesterday's meeting notes for me, and list the three decisions we made about the "
    "deployment schedule, who owns each follow-up, and whether anything is still blocked on review.",
]
_rng = random.Random(7)
_RECORDS = [
    {
        "id": i,
        "user": f"user{i:03d}",
        "email": f"person{i}@example.org",
        "active": i % 2 == 0,
        "roles": ["reader", "writer"][: 1 + i % 2],
        "created_at": f"2024-0{1 + i % 9}-1{i % 10}T10:3{i % 10}:00Z",
        "score": round(_rng.uniform(0, 100), 2),
    }
    for i in range(12)
]
_QUERY = {
    "bool": {"must": [{"match": {"title": "redis acl"}}], "filter": [{"range": {"ts": {"gte": 1700000000}}}]}
}
JSON = [json.dumps(_RECORDS[i : i + 3]) for i in range(0, 12, 3)] + [json.dumps({"query": _QUERY}, indent=2)]
CJK = [
    "上下文窗口的大小因模型而异。小模型只能接受四千个词元，而新的模型可以读取超过十万个词元。"
    "向小模型发送过多文本时不会明显报错，运行时会悄悄丢弃提示中最旧的部分。",
    "数据库迁移在单个事务中执行，因此中途崩溃时数据库保持原样。运维人员可以安全地重新运行该命令。",
    "チャットサービスは起動時にRedisへの接続プールを開き、すべてのリクエストで再利用します。"
    "プールが枯渇した場合、呼び出し側は短い時間だけ待ってから明確なエラーを受け取ります。",
    "모델마다 컨텍스트 창의 크기가 다릅니다. 작은 모델은 사천 개의 토큰만 받을 수 있습니다.",
]
SAMPLES = [("english", s) for s in ENGLISH] + [("json", s) for s in JSON] + [("cjk", s) for s in CJK]

# Each CJK character and each digit a token of its own at best, as in LLM tokenizers with 32k vocabularies
# (Mistral, Llama 2, Phi-3); words become single tokens, as in large-vocabulary ones.
_CJK = r"[\u3000-\u303f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef]"


def _train_bpe(corpus: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CJK), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def real_tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real byte-level BPE tokenizer.json trained on the samples' domain: words, JSON punctuation runs and
    CJK characters all merged as far as the tokenizer allows, i.e. the fewest tokens a real model spends."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    _train_bpe([text for _, text in SAMPLES] * 3, vocab_size=4000).save(str(path))
    return path


# -- the heuristic -------------------------------------------------------------------------------------------


def test_heuristic_basic_counts() -> None:
    counter = HeuristicCounter(chars_per_token=4.0, safety_margin=0.0)
    assert counter.count("") == 0
    assert counter.count("abcd") == 1
    assert counter.count("abcde") == 2  # rounds up: never below the estimate
    assert counter.count("a" * 400) == 100
    assert counter.count_message(Message("user", "abcd")) == 1 + MESSAGE_OVERHEAD_TOKENS
    assert counter.count_message(Message("assistant", "")) == MESSAGE_OVERHEAD_TOKENS


def test_heuristic_margin_raises_the_estimate() -> None:
    text = "plain words " * 100
    plain = HeuristicCounter(4.0, 0.0).count(text)
    assert HeuristicCounter(4.0, 0.25).count(text) == pytest.approx(plain * 1.25, abs=1)
    assert HeuristicCounter(2.0, 0.0).count(text) == pytest.approx(plain * 2, abs=1)


def test_heuristic_weights_what_chars_per_token_would_undercount() -> None:
    counter = HeuristicCounter(4.0, 0.0)
    letters = counter.count("a" * 40)
    assert counter.count('{"":[],' * 10) > letters  # punctuation
    assert counter.count("1234567890" * 4) > letters  # digits
    assert counter.count("漢" * 40) > 4 * letters  # CJK: chars/4 undercounts 2-4x
    assert counter.count("é" * 40) > letters
    assert counter.count("🙂" * 40) > counter.count("漢" * 40)


def test_heuristic_survives_lone_surrogates() -> None:
    text = json.loads('"broken \\ud800 pair"')
    assert HeuristicCounter(4.0, 0.1).count(text) > 0


@pytest.mark.parametrize(("cpt", "margin"), [(0, 0.1), (-1, 0.1), (float("nan"), 0.1), (4, -0.1), (4, 1.5)])
def test_heuristic_refuses_bad_parameters(cpt: float, margin: float) -> None:
    with pytest.raises(ValueError, match=r"chars_per_token|safety_margin"):
        HeuristicCounter(cpt, margin)


@pytest.mark.parametrize(("kind", "text"), SAMPLES, ids=[f"{k}{i}" for i, (k, _) in enumerate(SAMPLES)])
def test_heuristic_never_undercounts_a_real_tokenizer(
    real_tokenizer_file: Path, kind: str, text: str
) -> None:
    real = TokenizerFileCounter(real_tokenizer_file).count(text)
    heuristic = HeuristicCounter(chars_per_token=4.0, safety_margin=0.10)  # the packaged registry's setting
    estimate = heuristic.count(text)
    # Never under the real count once the margin is applied, i.e. the raw estimate is off by less than it ...
    assert estimate >= real, f"{kind}: estimated {estimate}, real {real}"
    assert heuristic.raw_estimate(text) >= real * (1 - heuristic.safety_margin)
    # ... and not so far over that the window wastes most of its budget.
    assert estimate <= 2 * real, f"{kind}: estimated {estimate}, real {real}"


def test_plain_chars_per_4_would_fail_the_same_check(real_tokenizer_file: Path) -> None:
    """The check above can fail: AutoBot's chars/4 undercounts the CJK and JSON samples."""
    real = TokenizerFileCounter(real_tokenizer_file)
    assert all(len(text) / 4 < real.count(text) for text in CJK)
    assert any(len(text) / 4 < real.count(text) for text in JSON)


# -- the tokenizer.json counter ------------------------------------------------------------------------------


def _word_level(tmp_path: Path, **extra: object) -> Path:
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False)
    tokenizer.train_from_iterator(["hello world", "the chat service answers", "hello chat"], trainer)
    if extra.get("template"):
        # A BERT-style file that adds [CLS] ... [SEP] and truncates to 4 tokens: neither may leak into counts.
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[
                ("[CLS]", tokenizer.token_to_id("[CLS]")),
                ("[SEP]", tokenizer.token_to_id("[SEP]")),
            ],
        )
        tokenizer.enable_truncation(max_length=4)
        tokenizer.enable_padding(length=16)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_tokenizer_file_counts_exactly(tmp_path: Path) -> None:
    counter = TokenizerFileCounter(_word_level(tmp_path))
    assert counter.count("") == 0
    assert counter.count("hello world") == 2
    assert counter.count("hello, unknown world!") == 5  # hello , [UNK] world !
    assert counter.count_message(Message("user", "hello chat")) == 2 + MESSAGE_OVERHEAD_TOKENS


def test_tokenizer_file_ignores_special_tokens_truncation_and_padding(tmp_path: Path) -> None:
    counter = TokenizerFileCounter(_word_level(tmp_path, template=True))
    assert counter.count("hello world the chat service answers hello chat") == 8


def test_tokenizer_file_survives_lone_surrogates(tmp_path: Path) -> None:
    counter = TokenizerFileCounter(_word_level(tmp_path))
    assert counter.count(json.loads('"hello \\ud800 world"')) == 3


def test_bpe_tokenizer_file_round_trip(real_tokenizer_file: Path) -> None:
    counter = TokenizerFileCounter(real_tokenizer_file)
    reference = Tokenizer.from_file(str(real_tokenizer_file))
    for _, text in SAMPLES:
        assert counter.count(text) == len(reference.encode(text).ids)


def test_tokenizer_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(TokenizerLoadError, match=f"cannot load tokenizer file {missing}"):
        TokenizerFileCounter(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"not": "a tokenizer"}')
    with pytest.raises(TokenizerLoadError, match=r"garbage\.json"):
        TokenizerFileCounter(garbage)


def test_make_counter_follows_the_spec(tmp_path: Path) -> None:
    heuristic = make_counter(HeuristicTokenizer(3.0, 0.2))
    assert isinstance(heuristic, HeuristicCounter)
    assert (heuristic.chars_per_token, heuristic.safety_margin) == (3.0, 0.2)
    path = _word_level(tmp_path)
    from_file = make_counter(TokenizerFile(path))
    assert isinstance(from_file, TokenizerFileCounter)
    assert from_file.count("hello world") == 2


def test_heuristic_is_cheap() -> None:
    """Counting runs on the event loop for every request: a 20k-character message must cost well under 1 ms
    of CPU here (the field notes budget ~1.2 ms for a whole chat request)."""
    import time

    counter = HeuristicCounter(4.0, 0.1)
    text = (ENGLISH[0] + JSON[0] + CJK[0]) * 20
    start = time.process_time()
    for _ in range(200):
        counter.count(text)
    per_call = (time.process_time() - start) / 200
    assert per_call < 0.001, f"{per_call * 1e6:.0f} us per {len(text)}-character count"
