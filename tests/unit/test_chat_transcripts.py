"""Transcripts on a real file system: concurrency, corruption, thread off-loading.

Atomic writes and crashes: tests/unit/test_atomic_file.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from autobot.atomic_file import write_atomic
from autobot.chat import transcripts as transcripts_module
from autobot.chat.entries import ChatEntry, InvalidSessionIdError
from autobot.chat.transcripts import (
    TranscriptStorageError,
    TranscriptStore,
    parse_transcript,
    set_aside,
)


def _entry(i: int) -> ChatEntry:
    return ChatEntry.new("user" if i % 2 == 0 else "assistant", f"message {i}")


async def test_append_creates_the_transcript_with_the_documented_fields(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path / "transcripts")
    await store.initialize()
    first, second = _entry(0), _entry(1)
    await store.append("s1", [first])
    written = await store.append("s1", [second])
    doc = json.loads((tmp_path / "transcripts" / "s1.json").read_text(encoding="utf-8"))
    assert doc["session_id"] == "s1"
    assert doc["message_count"] == 2
    assert [m["id"] for m in doc["messages"]] == [first.id, second.id]
    assert doc["created_at"] <= doc["updated_at"]
    assert written.messages == (first, second)
    assert await store.load("s1") == written
    assert await store.load("nobody") is None


async def test_session_ids_cannot_escape_the_directory(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path / "t")
    await store.initialize()
    with pytest.raises(InvalidSessionIdError):
        await store.append("../escape", [_entry(0)])
    assert list(tmp_path.iterdir()) == [tmp_path / "t"]


async def test_200_concurrent_appends_to_one_session_lose_nothing(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path)
    entries = [_entry(i) for i in range(200)]
    await asyncio.gather(*(store.append("busy", [e]) for e in entries))
    doc = json.loads((tmp_path / "busy.json").read_bytes())
    assert doc["message_count"] == 200
    assert sorted(m["id"] for m in doc["messages"]) == sorted(e.id for e in entries)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


async def test_file_work_runs_in_worker_threads_not_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(("fsync", threading.get_ident()))
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        seen.append(("replace", threading.get_ident()))
        real_replace(src, dst)

    monkeypatch.setattr(transcripts_module.os, "fsync", fsync)
    monkeypatch.setattr(transcripts_module.os, "replace", replace)
    store = TranscriptStore(tmp_path)
    await store.append("s", [_entry(0)])
    await store.load("s")
    assert {name for name, _ in seen} == {"fsync", "replace"}
    assert all(thread != loop_thread for _, thread in seen)


async def test_a_corrupt_transcript_is_set_aside_and_logged_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b'{"session_id": "s1", "messages": [ truncated'
    (tmp_path / "s1.json").write_bytes(garbage)
    store = TranscriptStore(tmp_path)
    new = _entry(0)
    written = await store.append("s1", [new])
    assert written.messages == (new,)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("s1.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == garbage
    assert "corrupt" in caplog.text
    assert str(aside[0]) in caplog.text


async def test_a_change_made_behind_the_stores_back_is_noticed(tmp_path: Path) -> None:
    store, other = TranscriptStore(tmp_path), TranscriptStore(tmp_path)
    first, external, last = _entry(0), _entry(1), _entry(2)
    await store.append("s", [first])
    await other.append("s", [external])  # another writer: the first store's memory of the file is stale
    written = await store.append("s", [last])
    assert [m.id for m in written.messages] == [first.id, external.id, last.id]
    (tmp_path / "s.json").write_bytes(b"overwritten by hand")
    after = await store.append("s", [_entry(3)])
    assert len(after.messages) == 1
    assert [p.read_bytes() for p in tmp_path.iterdir() if ".corrupt-" in p.name] == [b"overwritten by hand"]
    assert await store.load("s") == after
    assert parse_transcript((tmp_path / "s.json").read_bytes(), "s") == after


async def test_memory_of_recent_sessions_is_bounded(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path, cached_sessions=2)
    for session in ("a", "b", "c", "a"):
        await store.append(session, [_entry(0)])
    assert list(store._snapshots) == ["c", "a"]
    loaded = [await store.load(s) for s in "abc"]
    assert [len(t.messages) if t else 0 for t in loaded] == [2, 1, 1]


async def test_aclose_lets_queued_writes_finish_and_the_store_stays_usable(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path, io_threads=2)
    writes = [asyncio.create_task(store.append(f"s{i}", [_entry(i)])) for i in range(20)]
    await asyncio.sleep(0.01)
    await store.aclose()
    await asyncio.gather(*writes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"s{i}.json" for i in range(20))
    await store.append("s0", [_entry(1)])  # a later call starts new threads
    assert json.loads((tmp_path / "s0.json").read_bytes())["message_count"] == 2
    await store.aclose()


def test_set_aside_never_overwrites_an_earlier_copy(tmp_path: Path) -> None:
    kept = []
    for content in (b"one", b"two", b"three"):
        path = tmp_path / "x.json"
        path.write_bytes(content)
        kept.append(set_aside(path))
    assert sorted(p.read_bytes() for p in kept) == [b"one", b"three", b"two"]
    assert len(set(kept)) == 3


async def test_unwritable_directory_is_a_storage_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores directory permissions; a regular file in place of the directory fails for everyone
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("x")
        store = TranscriptStore(blocker)
        with pytest.raises(TranscriptStorageError, match="not-a-dir"):
            await store.append("s", [_entry(0)])
        return
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(TranscriptStorageError):
            await TranscriptStore(tmp_path).append("s", [_entry(0)])
    finally:
        tmp_path.chmod(0o700)


def test_parse_refuses_a_transcript_of_another_session(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, b'{"session_id": "b"}', 0o600)
    with pytest.raises(ValueError, match="session_id"):
        parse_transcript(target.read_bytes(), "a")
