"""Transcripts on a real file system: append-only records, torn tails, the previous format, file locks,
reads by position, thread off-loading.

Two OS processes on one directory: tests/integration/test_transcript_processes.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from autobot.chat import transcripts as transcripts_module
from autobot.chat.entries import ChatEntry, InvalidSessionIdError, StoredEntry
from autobot.chat.records import encode_records
from autobot.chat.transcripts import TranscriptStorageError, TranscriptStore, set_aside


def _entry(i: int) -> ChatEntry:
    return ChatEntry.new("user" if i % 2 == 0 else "assistant", f"message {i}")


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _legacy_document(session_id: str, entries: list[ChatEntry]) -> bytes:
    """A transcript as the previous version wrote it: one JSON document, rewritten on every turn."""
    doc = {
        "session_id": session_id,
        "created_at": "2025-01-01T00:00:00.000000Z",
        "updated_at": "2025-01-02T00:00:00.000000Z",
        "message_count": len(entries),
        "messages": [e.to_dict() for e in entries],
    }
    return json.dumps(doc, ensure_ascii=False).encode()


@pytest.fixture
async def store(tmp_path: Path) -> TranscriptStore:
    s = TranscriptStore(tmp_path / "transcripts")
    await s.initialize()
    return s


async def test_append_writes_one_record_per_message_with_consecutive_seq(store: TranscriptStore) -> None:
    first, second, third = _entry(0), _entry(1), _entry(2)
    assert (await store.append("s1", [first])).last_seq == 1
    receipt = await store.append("s1", [second, third])
    assert (receipt.first_seq, receipt.last_seq) == (2, 3)
    records = _lines(store.path_for("s1"))
    assert [(r["seq"], r["id"]) for r in records] == [(1, first.id), (2, second.id), (3, third.id)]
    assert all(isinstance(r["crc32"], str) for r in records)
    assert os.stat(store.path_for("s1")).st_mode & 0o777 == 0o600
    assert await store.load("s1") == [StoredEntry(e, i + 1) for i, e in enumerate([first, second, third])]
    assert await store.load("nobody") == []
    assert await store.newest("s1") == StoredEntry(third, 3)
    assert await store.newest("nobody") is None


async def test_session_ids_cannot_escape_the_directory(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path / "t")
    await store.initialize()
    with pytest.raises(InvalidSessionIdError):
        await store.append("../escape", [_entry(0)])
    assert list(tmp_path.iterdir()) == [tmp_path / "t"]


async def test_200_concurrent_appends_to_one_session_lose_nothing(store: TranscriptStore) -> None:
    entries = [_entry(i) for i in range(200)]
    await asyncio.gather(*(store.append("busy", [e]) for e in entries))
    records = await store.load("busy")
    assert [r.seq for r in records] == list(range(1, 201))
    assert sorted(r.entry.id for r in records) == sorted(e.id for e in entries)


async def test_two_stores_on_one_directory_exclude_each_other_through_the_file_lock(tmp_path: Path) -> None:
    # Two stores share no in-process lock: only the flock on the lock file keeps their appends apart.
    one, two = TranscriptStore(tmp_path), TranscriptStore(tmp_path)
    entries = [_entry(i) for i in range(100)]
    await asyncio.gather(*(s.append("shared", [e]) for s, e in zip([one, two] * 50, entries, strict=True)))
    records = await one.load("shared")
    assert [r.seq for r in records] == list(range(1, 101))
    assert {r.entry.id for r in records} == {e.id for e in entries}
    assert (tmp_path / "shared.lock").exists()


async def test_an_append_costs_the_new_records_whatever_the_history_length(
    store: TranscriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append("short", [_entry(i) for i in range(10)])
    await store.append("long", [_entry(i) for i in range(20_000)])
    assert store.path_for("long").stat().st_size > 40 * store.path_for("short").stat().st_size
    counted = {"read": 0, "written": 0}
    real_pread, real_write = os.pread, os.write

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        counted["read"] += len(data)
        return data

    def write(fd: int, data: bytes | memoryview) -> int:
        written = real_write(fd, data)
        counted["written"] += written
        return written

    monkeypatch.setattr(transcripts_module.os, "pread", pread)
    monkeypatch.setattr(transcripts_module.os, "write", write)
    cost = {}
    for session in ("short", "long"):
        counted.update(read=0, written=0)
        await store.append(session, [_entry(1)])
        cost[session] = dict(counted)
        # The whole write is the new record (it differs between the two only in its seq's digits).
        assert cost[session]["written"] == len(store.path_for(session).read_bytes().splitlines()[-1]) + 1
    # The read is the newest record, found from the end of the file: one short read.
    assert cost["long"]["read"] <= 4 * 1024 + 1
    assert store.path_for("long").stat().st_size > 100 * cost["long"]["read"]


async def test_a_torn_last_record_is_set_aside_and_the_next_append_continues(
    store: TranscriptStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.append("s", [_entry(0), _entry(1)])
    path = store.path_for("s")
    intact = path.read_bytes()
    torn = encode_records(3, [_entry(2)])[:-25]  # a crash in the middle of writing record 3
    with path.open("ab") as handle:
        handle.write(torn)
    assert [r.seq for r in await store.load("s")] == [1, 2]  # readers skip it
    assert await store.newest("s") == StoredEntry((await store.load("s"))[1].entry, 2)
    receipt = await store.append("s", [_entry(3)])
    assert receipt.first_seq == 3  # the torn record never counted
    assert path.read_bytes().startswith(intact)
    assert [r.seq for r in await store.load("s")] == [1, 2, 3]
    aside = [p for p in path.parent.iterdir() if ".torn-" in p.name]
    assert [p.read_bytes() for p in aside] == [torn]
    assert str(aside[0]) in caplog.text


async def test_a_record_without_its_newline_is_torn_too(store: TranscriptStore) -> None:
    await store.append("s", [_entry(0)])
    path = store.path_for("s")
    with path.open("ab") as handle:
        handle.write(encode_records(2, [_entry(1)]).rstrip(b"\n"))
    await store.append("s", [_entry(2)])
    assert [r.seq for r in await store.load("s")] == [1, 2]
    assert len([p for p in path.parent.iterdir() if ".torn-" in p.name]) == 1


async def test_a_damaged_record_in_the_middle_is_skipped_and_logged_not_lost(
    store: TranscriptStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.append("s", [_entry(i) for i in range(5)])
    path = store.path_for("s")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"message", b"massage")
    path.write_bytes(b"".join(lines))
    assert [r.seq for r in await store.load("s")] == [1, 2, 4, 5]
    assert [r.seq for r in await store.page("s", 2, 4)] == [2, 4]
    async with store.locked("s") as transcript:
        assert [r.seq for r in await transcript.tail(4)] == [1, 2, 4, 5]
        assert (await transcript.append([_entry(5)])).last_seq == 6  # numbering is by record, not by line
    assert b"massage" in path.read_bytes()  # kept for a person to look at
    assert "corrupt transcript record" in caplog.text


async def test_pages_are_found_by_sequence_number_in_a_long_transcript(store: TranscriptStore) -> None:
    long_text = "x" * 300
    entries = [ChatEntry.new("user", f"{i} {long_text}") for i in range(5_000)]
    for start in range(0, 5_000, 1_000):
        await store.append("long", entries[start : start + 1_000])
    assert store.path_for("long").stat().st_size > 20 * 64 * 1024  # the binary search has work to do
    for first, last in [(1, 10), (1234, 1300), (4990, 5000), (4999, 6000), (2500, 2500)]:
        page = await store.page("long", first, last)
        assert [r.seq for r in page] == list(range(first, min(last, 5000) + 1))
        assert [r.entry for r in page] == entries[first - 1 : min(last, 5000)]
    assert await store.page("long", 6000, 6010) == []
    assert await store.page("long", 0, 0) == []
    async with store.locked("long") as transcript:
        assert [r.seq for r in await transcript.tail(3)] == [4998, 4999, 5000]


async def test_the_previous_format_is_read_and_migrated_by_the_first_append_losing_nothing(
    store: TranscriptStore,
) -> None:
    old = [_entry(i) for i in range(30)]
    legacy = store.legacy_path_for("old")
    legacy.write_bytes(_legacy_document("old", old))
    # Reading migrates nothing: it only reads.
    assert [r.entry for r in await store.load("old")] == old
    assert [r.seq for r in await store.page("old", 28, 40)] == [28, 29, 30]
    assert await store.newest("old") == StoredEntry(old[-1], 30)
    assert legacy.exists()
    assert not store.path_for("old").exists()
    new = _entry(30)
    assert (await store.append("old", [new])).last_seq == 31
    assert not legacy.exists()
    assert [(r["seq"], r["id"]) for r in _lines(store.path_for("old"))] == [
        (i + 1, e.id) for i, e in enumerate([*old, new])
    ]


async def test_a_migration_cut_short_keeps_the_old_file_aside(store: TranscriptStore) -> None:
    old = [_entry(i) for i in range(3)]
    store.legacy_path_for("m").write_bytes(_legacy_document("m", old))
    store.path_for("m").write_bytes(encode_records(1, old))  # the records were written, the old file stayed
    await store.append("m", [_entry(3)])
    assert [r.seq for r in await store.load("m")] == [1, 2, 3, 4]
    kept = [p for p in store.directory.iterdir() if p.name.startswith("m.json.migrated-")]
    assert [json.loads(p.read_bytes())["message_count"] for p in kept] == [3]


async def test_a_corrupt_transcript_in_the_previous_format_is_set_aside_not_lost(
    store: TranscriptStore, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b'{"session_id": "s1", "messages": [ truncated'
    store.legacy_path_for("s1").write_bytes(garbage)
    assert await store.load("s1") == []
    new = _entry(0)
    assert (await store.append("s1", [new])).last_seq == 1
    aside = [p for p in store.directory.iterdir() if p.name.startswith("s1.json.corrupt-")]
    assert [p.read_bytes() for p in aside] == [garbage]
    assert "corrupt" in caplog.text


async def test_file_work_runs_in_worker_threads_not_on_the_event_loop(
    store: TranscriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []
    real_fdatasync, real_flock = os.fdatasync, transcripts_module.fcntl.flock

    def fdatasync(fd: int) -> None:
        seen.append(("fdatasync", threading.get_ident()))
        real_fdatasync(fd)

    def flock(fd: int, operation: int) -> None:
        seen.append(("flock", threading.get_ident()))
        real_flock(fd, operation)

    monkeypatch.setattr(transcripts_module.os, "fdatasync", fdatasync)
    monkeypatch.setattr(transcripts_module.fcntl, "flock", flock)
    await store.append("s", [_entry(0)])
    await store.load("s")
    assert {name for name, _ in seen} == {"fdatasync", "flock"}
    assert all(thread != loop_thread for _, thread in seen)


async def test_a_cancelled_append_keeps_the_lock_until_its_write_is_done(
    store: TranscriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request cancelled while its append runs in a thread: the file lock must cover that write to its
    # end, or a writer in another process could interleave with it.
    started, finish = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        started.set()
        finish.wait(5)
        real_fdatasync(fd)

    monkeypatch.setattr(transcripts_module.os, "fdatasync", slow_fdatasync)
    task = asyncio.create_task(store.append("c", [_entry(0)]))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(transcripts_module.os, "fdatasync", real_fdatasync)
    other = TranscriptStore(store.directory)  # another process, as far as locks go
    second = asyncio.create_task(other.append("c", [_entry(1)]))
    await asyncio.sleep(0.2)
    assert not second.done()  # waits for the lock the cancelled write still holds
    finish.set()
    assert (await second).last_seq == 2
    assert [r.seq for r in await store.load("c")] == [1, 2]
    await other.aclose()


async def test_aclose_lets_queued_writes_finish_and_the_store_stays_usable(tmp_path: Path) -> None:
    store = TranscriptStore(tmp_path, io_threads=2)
    writes = [asyncio.create_task(store.append(f"s{i}", [_entry(i)])) for i in range(20)]
    await asyncio.sleep(0.01)
    await store.aclose()
    await asyncio.gather(*writes)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == sorted(f"s{i}.jsonl" for i in range(20))
    await store.append("s0", [_entry(1)])  # a later call starts new threads
    assert [r.seq for r in await store.load("s0")] == [1, 2]
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
