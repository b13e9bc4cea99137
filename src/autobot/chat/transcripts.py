"""Chat transcripts: the durable record of every message, one append-only file per session.

Files in the transcripts directory, per session (the record format is in records.py):
- `<session_id>.jsonl`: one checksummed JSON record per message, appended, fsynced per write, never
  rewritten; so a turn's durable write costs the new lines, whatever the length of the history.
- `<session_id>.lock`: the lock file. Writers take `flock(LOCK_EX)` on it around an append (and the workflow
  around the Redis write that follows), so several processes can serve one data directory without losing or
  reordering lines. Lock files are never deleted: unlinking one while another process waits on it would
  let two writers in.
- `<session_id>.json`: a transcript in the previous format (one document rewritten per turn). It is read as
  it is, and migrated to `.jsonl` by the first append, under the lock, losing nothing.

A torn last record (a crash during a write) is found by the next append: the bytes after the last valid
record are copied aside to `<name>.torn-<utc>`, logged, and cut off before the new records are written.
Readers take no lock: records are only appended, each line checks itself, and a line being written just now
is skipped like a torn one. File work runs in this store's worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from autobot.atomic_file import fsync_dir, write_atomic
from autobot.chat.entries import ChatEntry, StoredEntry, validate_session_id
from autobot.chat.locks import KeyedLocks
from autobot.chat.records import (
    CorruptRecordError,
    CorruptTranscriptError,
    decode_record,
    encode_records,
    parse_legacy,
    record_seq,
)

__all__ = [
    "AppendReceipt",
    "CorruptTranscriptError",
    "SessionTranscript",
    "TranscriptStorageError",
    "TranscriptStore",
    "set_aside",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSCRIPT_MODE = 0o600  # conversations: the service user only
_BLOCK = 64 * 1024  # read size when walking a file backwards or forwards, and the binary search's floor
_PROBE = 4096  # read size of one binary search probe (a record is usually far shorter)


class TranscriptStorageError(Exception):
    """The transcript file could not be read or written (disk full, permissions, ...)."""


@dataclass(frozen=True, slots=True)
class AppendReceipt:
    """The sequence numbers the appended entries got; `last_seq` is the session's message count now."""

    first_seq: int
    last_seq: int


def set_aside(path: Path, tag: str = "corrupt") -> Path:
    """Rename a file to `<name>.<tag>-<utc>` (never overwriting an earlier one) and return the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{counter}")
        counter += 1
    os.rename(path, target)
    return target


# -- walking a transcript's lines (worker threads) ---------------------------------------------------------


def _lines_backward(fd: int, end: int) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line, terminated) for the lines of bytes [0, end), newest first, read in blocks from the
    end: reading the newest records costs them, not the file. `terminated`: a newline follows the line."""
    if end <= 0:
        return
    terminated = os.pread(fd, 1, end - 1) == b"\n"
    buf_start = end - 1 if terminated else end  # buf holds bytes [buf_start, buf_start + len(buf))
    buf, hi = b"", 0  # hi: end of the part of buf not yet yielded
    block = _PROBE  # the newest record is usually short: read a little first, more only when needed
    while True:
        newline = buf.rfind(b"\n", 0, hi)
        while newline < 0 and buf_start > 0:
            start = max(0, buf_start - block)
            block = min(2 * block, _BLOCK)
            buf = os.pread(fd, buf_start - start, start) + buf[:hi]
            hi += buf_start - start
            buf_start = start
            newline = buf.rfind(b"\n", 0, hi)
        if newline < 0:
            yield buf_start, buf[:hi], terminated
            return
        yield buf_start + newline + 1, buf[newline + 1 : hi], terminated
        terminated, hi = True, newline


def _lines_forward(fd: int, start: int, block: int = _BLOCK) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line, terminated) for the lines from `start` (a line start) to the end of the file."""
    buf, offset = b"", start
    while True:
        chunk = os.pread(fd, block, offset + len(buf))
        if not chunk:
            if buf:
                yield offset, buf, False
            return
        buf += chunk
        pos = 0
        while (newline := buf.find(b"\n", pos)) >= 0:
            yield offset + pos, buf[pos:newline], True
            pos = newline + 1
        buf, offset = buf[pos:], offset + pos


def _tail(fd: int, size: int, count: int) -> tuple[list[StoredEntry], int]:
    """The newest `count` valid records (oldest first), and the offset just past the newest valid record:
    anything after it is a torn or damaged tail. Corrupt lines further back are skipped and logged."""
    found: list[StoredEntry] = []
    good_end: int | None = None
    for offset, line, terminated in _lines_backward(fd, size):
        try:
            record = decode_record(line)
        except CorruptRecordError as exc:
            if good_end is not None:
                log.warning("skipping a corrupt transcript record at byte %d: %s", offset, exc)
            continue
        if good_end is None:
            good_end = offset + len(line) + (1 if terminated else 0)
            if not terminated:  # valid but unterminated: a write cut just before its newline
                good_end = offset
                continue
        found.append(record)
        if len(found) >= count:
            break
    found.reverse()
    return found, good_end if good_end is not None else 0


def _first_line_at_or_after(fd: int, pos: int) -> int:
    """The offset of the first line starting at or after `pos`."""
    if pos == 0:
        return 0
    offset = pos - 1
    while chunk := os.pread(fd, _PROBE, offset):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return offset + newline + 1
        offset += len(chunk)
    return offset


def _seek_seq(fd: int, size: int, target: int) -> int:
    """A line start at or before the first record with seq >= `target` (records are in seq order), found by
    binary search over byte offsets: a page deep in a long history costs O(log n) short reads."""
    lo, hi = 0, size  # every valid record starting before `lo` has seq < target
    while hi - lo > _BLOCK:
        mid = (lo + hi) // 2
        start = _first_line_at_or_after(fd, mid)
        seq = None
        for offset, line, _ in _lines_forward(fd, start, _PROBE):
            if offset >= hi:
                break
            seq = record_seq(line)
            if seq is not None:
                start = offset
                break
        if seq is None:
            hi = mid
        elif seq < target:
            lo = start
        else:
            hi = mid
    return lo


def _read_range(fd: int, size: int, first: int, last: int) -> list[StoredEntry]:
    found: list[StoredEntry] = []
    for offset, line, terminated in _lines_forward(fd, _seek_seq(fd, size, first)):
        if offset >= size:
            break
        try:
            record = decode_record(line)
        except CorruptRecordError as exc:
            if terminated:  # an unterminated last line may be a write in progress: not worth a warning
                log.warning("skipping a corrupt transcript record at byte %d: %s", offset, exc)
            continue
        if record.seq > last:
            break
        if record.seq >= first:
            found.append(record)
    return found


# -- the store -------------------------------------------------------------------------------------------


class SessionTranscript:
    """One session's transcript while the holder has its lock: in this process (an asyncio lock, taken by
    `TranscriptStore.locked`) and across processes (flock on the lock file, taken in the worker thread by
    the first operation and released when the `locked` block ends). If the block is left while an
    operation still runs in its thread (a cancelled request), the thread releases the file lock when done,
    so the lock never covers half a write."""

    def __init__(self, store: TranscriptStore, session_id: str) -> None:
        self._store = store
        self.session_id = session_id
        self._guard = threading.Lock()
        self._fd: int | None = None
        self._busy = False
        self._released = False

    async def append(self, entries: Sequence[ChatEntry]) -> AppendReceipt:
        """Append entries durably (one write, one fdatasync); returns their sequence numbers."""
        if not entries:
            raise ValueError("append needs at least one entry")
        return await self._run(functools.partial(self._store._append_sync, self.session_id, tuple(entries)))

    async def tail(self, count: int) -> list[StoredEntry]:
        """The newest `count` records, oldest first."""
        return await self._run(functools.partial(self._store._tail_sync, self.session_id, count))

    async def delete(self) -> bool:
        """Remove the transcript (a deleted session); False if there was none. The lock file stays: unlinking
        it while another process waits on it would let two writers in."""
        return await self._run(functools.partial(self._store._delete_sync, self.session_id))

    async def _run(self, call: Callable[[], T]) -> T:
        return await self._store._run(functools.partial(self._locked_call, call))

    def _locked_call(self, call: Callable[[], T]) -> T:
        with self._guard:
            if self._released:
                raise RuntimeError(f"the transcript lock of session {self.session_id!r} was released")
            self._busy = True
        try:
            if self._fd is None:
                self._fd = self._store._lock_sync(self.session_id)
                with self._guard:
                    if self._released:  # given up while this thread waited for the lock: do nothing
                        raise RuntimeError(f"the transcript lock of session {self.session_id!r} was released")
            return call()
        finally:
            with self._guard:
                self._busy = False
                close = self._released
            if close:
                self._close()

    def _release(self) -> None:
        with self._guard:
            self._released = True
            if self._busy:
                return  # the worker thread closes it when its call returns
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the lock file releases the flock


class TranscriptStore:
    """The transcripts of one directory."""

    def __init__(self, directory: Path, *, io_threads: int = 32) -> None:
        self.directory = Path(directory)
        self._locks = KeyedLocks()
        # Its own threads: a write mostly waits on fsync with the GIL released, so many can overlap (and
        # the file system batches their journal commits). In the shared default pool (cores + 4 threads)
        # 50 concurrent turns queued behind each other for tens of milliseconds.
        self._io_threads = io_threads
        self._executor: ThreadPoolExecutor | None = None

    async def initialize(self) -> None:
        try:
            await self._run(functools.partial(self.directory.mkdir, parents=True, exist_ok=True))
        except OSError as exc:
            raise TranscriptStorageError(
                f"cannot create transcripts directory {self.directory}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        """Let queued writes finish, then stop the threads (a later call starts new ones)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def _run(self, call: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._io_threads, thread_name_prefix="transcripts")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def path_for(self, session_id: str) -> Path:
        return self.directory / f"{validate_session_id(session_id)}.jsonl"

    def legacy_path_for(self, session_id: str) -> Path:
        return self.directory / f"{validate_session_id(session_id)}.json"

    def lock_path_for(self, session_id: str) -> Path:
        return self.directory / f"{validate_session_id(session_id)}.lock"

    @contextlib.asynccontextmanager
    async def locked(self, session_id: str) -> AsyncIterator[SessionTranscript]:
        """Hold the session's transcript lock (this process and every other) while the block runs."""
        validate_session_id(session_id)
        async with self._locks.hold(session_id):
            handle = SessionTranscript(self, session_id)
            try:
                yield handle
            finally:
                handle._release()

    async def append(self, session_id: str, entries: Sequence[ChatEntry]) -> AppendReceipt:
        """Append entries under the session's lock (the workflow uses `locked`, to cover its Redis write)."""
        async with self.locked(session_id) as transcript:
            return await transcript.append(entries)

    async def load(self, session_id: str) -> list[StoredEntry]:
        """Every valid record, oldest first (empty when there is no transcript)."""
        return await self._run(functools.partial(self._load_sync, session_id))

    async def newest(self, session_id: str) -> StoredEntry | None:
        """The newest record, without taking the lock (a write in progress is not seen yet)."""
        records = await self._run(functools.partial(self._tail_sync, session_id, 1))
        return records[-1] if records else None

    async def page(self, session_id: str, first: int, last: int) -> list[StoredEntry]:
        """The records with `first <= seq <= last`, oldest first, found by binary search, without the lock."""
        if first < 1 or last < first:
            return []
        return await self._run(functools.partial(self._page_sync, session_id, first, last))

    # -- in worker threads ------------------------------------------------------------------------------

    def _lock_sync(self, session_id: str) -> int:
        path = self.lock_path_for(session_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, TRANSCRIPT_MODE)
        except OSError as exc:
            raise TranscriptStorageError(f"cannot open transcript lock {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _with_file(self, session_id: str, read: Callable[[int, int], list[StoredEntry]]) -> list[StoredEntry]:
        """Run `read(fd, size)` on the session's records file (nothing to read: empty)."""
        path = self.path_for(session_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TranscriptStorageError(f"cannot read transcript {path}: {exc}") from exc
        try:
            return read(fd, os.fstat(fd).st_size)
        except OSError as exc:
            raise TranscriptStorageError(f"cannot read transcript {path}: {exc}") from exc
        finally:
            os.close(fd)

    def _read_legacy(self, session_id: str) -> list[StoredEntry] | None:
        """The records of a previous-format transcript, None when there is none (or it is corrupt: it is
        set aside by the next append, under the lock, not by a reader)."""
        path = self.legacy_path_for(session_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TranscriptStorageError(f"cannot read transcript {path}: {exc}") from exc
        try:
            return parse_legacy(raw, session_id).stored()
        except CorruptTranscriptError as exc:
            log.error("transcript %s is corrupt (%s); it will be set aside by the next write", path, exc)
            return None

    # A transcript still in the previous format is read whole: it is migrated by its next append.

    def _delete_sync(self, session_id: str) -> bool:
        """Called with the session's file lock held."""
        removed = False
        for path in (self.path_for(session_id), self.legacy_path_for(session_id)):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise TranscriptStorageError(f"cannot delete transcript {path}: {exc}") from exc
            removed = True
        if removed:
            fsync_dir(self.directory)
        return removed

    def _load_sync(self, session_id: str) -> list[StoredEntry]:
        legacy = self._read_legacy(session_id)
        if legacy is not None:
            return legacy
        return self._with_file(session_id, lambda fd, size: _read_range(fd, size, 1, size + 1))

    def _tail_sync(self, session_id: str, count: int) -> list[StoredEntry]:
        if count < 1:
            return []
        legacy = self._read_legacy(session_id)
        if legacy is not None:
            return legacy[-count:]
        return self._with_file(session_id, lambda fd, size: _tail(fd, size, count)[0])

    def _page_sync(self, session_id: str, first: int, last: int) -> list[StoredEntry]:
        legacy = self._read_legacy(session_id)
        if legacy is not None:
            return [r for r in legacy if first <= r.seq <= last]
        return self._with_file(session_id, lambda fd, size: _read_range(fd, size, first, last))

    def _append_sync(self, session_id: str, entries: tuple[ChatEntry, ...]) -> AppendReceipt:
        """Called with the session's file lock held."""
        path = self.path_for(session_id)
        try:
            self._migrate_legacy(session_id, path)
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, TRANSCRIPT_MODE)
        except OSError as exc:
            raise TranscriptStorageError(f"cannot open transcript {path}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            newest, good_end = _tail(fd, size, 1)
            if good_end < size:
                self._cut_torn_tail(fd, path, good_end, size)
            first = newest[-1].seq + 1 if newest else 1
            data = encode_records(first, entries)
            try:
                _write_all(fd, data)
                os.fdatasync(fd)
            except OSError:
                # Leave no half record behind for the next writer to find: back to the last good record.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, good_end)
                raise
        except OSError as exc:
            raise TranscriptStorageError(f"cannot write transcript {path}: {exc}") from exc
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)  # the new name must survive a power loss too
        return AppendReceipt(first, first + len(entries) - 1)

    def _cut_torn_tail(self, fd: int, path: Path, good_end: int, size: int) -> None:
        torn = os.pread(fd, size - good_end, good_end)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}.torn-{stamp}")
        write_atomic(aside, torn, TRANSCRIPT_MODE)
        os.ftruncate(fd, good_end)
        os.fsync(fd)
        log.error(
            "transcript %s ended in %d bytes that are not a complete record (a write cut short?); "
            "kept as %s and cut off",
            path,
            size - good_end,
            aside,
        )

    def _migrate_legacy(self, session_id: str, path: Path) -> None:
        """Turn a previous-format transcript into records (once, under the lock), losing nothing."""
        legacy = self.legacy_path_for(session_id)
        try:
            raw = legacy.read_bytes()
        except FileNotFoundError:
            return
        if path.exists():
            # Both: a migration wrote the records and stopped before removing the old file. The records
            # are complete (written atomically); the old file is kept aside, not deleted.
            aside = set_aside(legacy, "migrated")
            log.warning("transcript %s was already migrated to %s; old file kept as %s", legacy, path, aside)
            return
        try:
            messages = parse_legacy(raw, session_id).messages
        except CorruptTranscriptError as exc:
            aside = set_aside(legacy)
            log.error("transcript %s is corrupt (%s); kept as %s, starting a new one", legacy, exc, aside)
            return
        write_atomic(path, encode_records(1, messages), TRANSCRIPT_MODE)
        os.unlink(legacy)
        fsync_dir(path.parent)
        log.info("transcript %s migrated to %s (%d messages)", legacy, path, len(messages))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
