"""Pure parts of the chat package: session ids, entry encoding, page arithmetic, per-key locks."""

from __future__ import annotations

import asyncio
import json

import pytest

from autobot.chat.entries import (
    SESSION_ID_MAX_LENGTH,
    ChatEntry,
    CorruptEntryError,
    InvalidSessionIdError,
    StoredEntry,
    validate_session_id,
)
from autobot.chat.history import HistoryPage, history_key, page_bounds
from autobot.chat.locks import BoundedSlots, KeyedLocks
from autobot.chat.workflow import history_before
from autobot.messages import Message


@pytest.mark.parametrize("good", ["a", "test", "0f8fad5b-d9cb-469f-a165-70867728950e", "A_b-9", "x" * 128])
def test_valid_session_ids_pass_unchanged(good: str) -> None:
    assert validate_session_id(good) == good


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "1 to 128"),
        ("x" * (SESSION_ID_MAX_LENGTH + 1), "1 to 128"),
        ("../etc", "only letters"),
        ("a/b", "only letters"),
        ("a:b", "only letters"),
        ("a b", "only letters"),
        ("-leading", "start with"),
        ("_leading", "start with"),
        ("é", "only letters"),
        ("a\x00", "only letters"),
        ("a\n", "only letters"),
    ],
)
def test_unsafe_session_ids_are_refused_with_the_reason(bad: str, why: str) -> None:
    with pytest.raises(InvalidSessionIdError, match=why):
        validate_session_id(bad)


def test_session_id_must_be_a_string() -> None:
    with pytest.raises(InvalidSessionIdError, match="string"):
        validate_session_id(42)


def test_history_key_layout_and_validation() -> None:
    assert history_key("abc") == "chat:history:abc"
    with pytest.raises(InvalidSessionIdError):
        history_key("a*")


def test_entry_round_trips_through_json_with_unicode() -> None:
    entry = ChatEntry.new("user", 'héllo "world"\n\u2028 🙂')
    decoded = ChatEntry.from_json(entry.to_json())
    assert decoded == entry
    assert set(json.loads(entry.to_json())) == {"id", "role", "content", "ts"}
    assert entry.to_message() == Message("user", entry.content)
    assert entry.ts.endswith("Z")


def test_new_entries_get_distinct_ids() -> None:
    assert len({ChatEntry.new("user", "x").id for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be an object"),
        (b'{"id":"1","role":"wizard","content":"x","ts":"t"}', "unknown role"),
        (b'{"id":"","role":"user","content":"x","ts":"t"}', "'id'"),
        (b'{"id":"1","role":"user","content":5,"ts":"t"}', "'content'"),
        (b'{"id":"1","role":"user","content":"x"}', "'ts'"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_corrupt_entries_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(CorruptEntryError, match=why):
        ChatEntry.from_json(raw)


@pytest.mark.parametrize(
    ("total", "retained", "limit", "before", "expected"),
    [
        (10, 10, 3, None, (8, 10)),
        (10, 10, 3, 8, (5, 7)),
        (10, 10, 3, 3, (1, 2)),  # clipped at the oldest message
        (10, 10, 3, 1, None),  # nothing older than the first
        (100, 20, 5, 90, (85, 89)),
        (100, 20, 5, 84, (81, 83)),  # Redis keeps seq 81..100 only
        (100, 20, 5, 82, (81, 81)),
        (100, 20, 50, None, (81, 100)),  # never beyond what Redis keeps
        (5, 5, 3, 999, (3, 5)),  # a cursor from the future reads the newest
        (0, 0, 3, None, None),
    ],
)
def test_page_bounds(
    total: int, retained: int, limit: int, before: int | None, expected: tuple[int, int] | None
) -> None:
    assert page_bounds(total, retained, limit, before) == expected


def test_next_before_points_at_the_oldest_returned_until_the_first_message() -> None:
    entries = [StoredEntry(ChatEntry.new("user", str(i)), seq) for i, seq in enumerate((8, 9, 10))]
    assert HistoryPage(entries, total=10, retained=10).next_before == 8
    # Older pages than Redis keeps come from the transcript: the cursor does not stop at Redis's edge.
    assert HistoryPage(entries, total=10, retained=3).next_before == 8
    assert HistoryPage(entries, total=10, retained=3).oldest_retained == 8
    first = [StoredEntry(ChatEntry.new("user", "a"), 1)]
    assert HistoryPage(first, total=10, retained=3).next_before is None
    assert HistoryPage([], total=10, retained=10).next_before is None


def test_history_before_excludes_the_new_entry_and_anything_appended_after_it() -> None:
    a, b, mine, later = (ChatEntry.new("user", x) for x in "ab" + "ml")
    assert history_before([a, b, mine, later], mine.id) == [a, b]
    assert history_before([a, b], mine.id) == [a, b]


async def test_keyed_locks_serialise_per_key_and_forget_idle_keys() -> None:
    locks = KeyedLocks()
    inside: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}

    async def work(key: str) -> None:
        async with locks.hold(key):
            inside[key] += 1
            peak[key] = max(peak[key], inside[key])
            await asyncio.sleep(0.001)
            inside[key] -= 1

    await asyncio.gather(*(work(k) for k in "ab" * 20))
    assert peak == {"a": 1, "b": 1}
    assert len(locks) == 0


async def test_keyed_locks_forget_cancelled_waiters() -> None:
    locks = KeyedLocks()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("k"):
            pass

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await held
    assert len(locks) == 0


async def test_bounded_slots_admit_capacity_holders_and_time_out_the_rest() -> None:
    slots = BoundedSlots(2)
    release = asyncio.Event()
    got: list[bool] = []

    async def holder() -> None:
        async with slots.hold(1.0) as slot:
            got.append(slot)
            await release.wait()

    holders = [asyncio.create_task(holder()) for _ in range(2)]
    await asyncio.sleep(0.01)
    async with slots.hold(0.05) as third:
        assert third is False  # both slots held for longer than the wait
    release.set()
    await asyncio.gather(*holders)
    assert got == [True, True]
    async with slots.hold(0.05) as again:
        assert again is True  # released slots are free again
    with pytest.raises(ValueError, match="capacity"):
        BoundedSlots(0)
