"""Chat transcripts: one JSON file per session, the durable copy of every message.

`<transcripts_dir>/<session_id>.json` = {session_id, created_at, updated_at, message_count, messages: [...]}
with the same entry objects as Redis. Every write goes through `autobot.atomic_file.write_atomic` (temp file,
fsync, rename), so a crash at any moment leaves the old or the new transcript, never a
truncated one. File work runs in a thread (never on the event loop) and appends to one session are
serialised by a per-session lock, so concurrent appends cannot overwrite each other's lines.
A transcript that cannot be parsed is renamed aside (`<name>.corrupt-<utc>`) and logged, not overwritten.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from autobot.atomic_file import fsync_dir, write_atomic
from autobot.chat.entries import ChatEntry, CorruptEntryError, utc_now_iso, validate_session_id
from autobot.chat.locks import KeyedLocks

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSCRIPT_MODE = 0o600  # conversations: the service user only


class CorruptTranscriptError(ValueError):
    """The transcript file is not a transcript this module wrote."""


class TranscriptStorageError(Exception):
    """The transcript file could not be read or written (disk full, permissions, ...)."""


@dataclass(frozen=True, slots=True)
class Transcript:
    session_id: str
    created_at: str
    updated_at: str
    messages: tuple[ChatEntry, ...] = field(default=())

    def appended(self, entries: Sequence[ChatEntry], now: str) -> Transcript:
        return Transcript(self.session_id, self.created_at, now, (*self.messages, *entries))

    def to_json(self) -> bytes:
        return render_document(self, render_block(self.messages))


def render_block(entries: Sequence[ChatEntry]) -> str:
    """The messages part of a transcript: one JSON object per line, joined by ",\\n".

    One message per line keeps transcripts readable with grep and tail, and every piece goes through the
    C encoder (json.dumps with `indent` falls back to pure Python, several times slower on every append).
    """
    return ",\n".join(json.dumps(e.to_dict(), ensure_ascii=False) for e in entries)


def render_document(transcript: Transcript, block: str) -> bytes:
    """The whole file for `transcript`, given its already rendered message block."""
    head = {
        "session_id": transcript.session_id,
        "created_at": transcript.created_at,
        "updated_at": transcript.updated_at,
        "message_count": len(transcript.messages),
    }
    return (json.dumps(head, ensure_ascii=False)[:-1] + ', "messages": [\n' + block + "\n]}\n").encode(
        "utf-8"
    )


def parse_transcript(raw: bytes, session_id: str) -> Transcript:
    """Parse and check a transcript file's bytes; raise CorruptTranscriptError with the reason."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptTranscriptError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptTranscriptError("top level is not an object")
    if doc.get("session_id") != session_id:
        raise CorruptTranscriptError(f"session_id is {doc.get('session_id')!r}, expected {session_id!r}")
    created_at, updated_at, messages = doc.get("created_at"), doc.get("updated_at"), doc.get("messages")
    if not isinstance(created_at, str) or not isinstance(updated_at, str):
        raise CorruptTranscriptError("created_at and updated_at must be strings")
    if not isinstance(messages, list):
        raise CorruptTranscriptError("messages must be a list")
    try:
        entries = tuple(ChatEntry.from_dict(m) for m in messages)
    except CorruptEntryError as exc:
        raise CorruptTranscriptError(str(exc)) from exc
    if doc.get("message_count") != len(entries):
        raise CorruptTranscriptError(
            f"message_count {doc.get('message_count')!r} does not match {len(entries)} messages"
        )
    return Transcript(session_id, created_at, updated_at, entries)


FileIdentity = tuple[int, int, int]
"""(inode, size, mtime in ns) of a file: if the file still has it, nobody has replaced or changed it."""


def identity(st: os.stat_result) -> FileIdentity:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def set_aside(path: Path) -> Path:
    """Rename a corrupt file to `<name>.corrupt-<utc>` (never overwriting an earlier one) and return it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    os.rename(path, target)
    return target


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """A transcript as this process last wrote it, so the next append need not re-read and re-render it."""

    identity: FileIdentity
    transcript: Transcript
    block: str


class TranscriptStore:
    """Transcripts of one directory. Keeps the last written state of recently active sessions in memory
    (validated against the file's identity before use, so an outside change is always noticed): an append
    then costs the new lines and one write, not a parse and re-render of the whole conversation."""

    def __init__(self, directory: Path, *, cached_sessions: int = 256, io_threads: int = 32) -> None:
        self.directory = Path(directory)
        self._locks = KeyedLocks()
        self._cached_sessions = cached_sessions
        # Touched only on the event loop thread (before and after the worker runs), so no lock is needed.
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
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
        return self.directory / f"{validate_session_id(session_id)}.json"

    async def load(self, session_id: str) -> Transcript | None:
        """The transcript, or None if there is none (or it was corrupt and has just been set aside)."""
        path = self.path_for(session_id)
        async with self._locks.hold(session_id):
            cached = self._snapshots.get(session_id)
            snapshot = await self._run(functools.partial(self._current_sync, path, session_id, cached))
            self._remember(session_id, snapshot)
            return snapshot.transcript if snapshot is not None else None

    async def append(self, session_id: str, entries: Sequence[ChatEntry]) -> Transcript:
        """Append entries durably; returns the transcript as written."""
        path = self.path_for(session_id)
        async with self._locks.hold(session_id):
            cached = self._snapshots.pop(session_id, None)  # dropped if the write fails
            snapshot = await self._run(
                functools.partial(self._append_sync, path, session_id, tuple(entries), cached)
            )
            self._remember(session_id, snapshot)
            return snapshot.transcript

    async def delete(self, session_id: str) -> bool:
        """Remove the session's transcript (a deleted session, issue 15); False if it had none."""
        path = self.path_for(session_id)
        async with self._locks.hold(session_id):
            self._snapshots.pop(session_id, None)
            try:
                await self._run(path.unlink)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise TranscriptStorageError(f"cannot delete transcript {path}: {exc}") from exc
            await self._run(functools.partial(fsync_dir, path.parent))
            return True

    def _remember(self, session_id: str, snapshot: _Snapshot | None) -> None:
        if snapshot is None or self._cached_sessions < 1:
            self._snapshots.pop(session_id, None)
            return
        self._snapshots[session_id] = snapshot
        self._snapshots.move_to_end(session_id)
        while len(self._snapshots) > self._cached_sessions:
            self._snapshots.popitem(last=False)

    # -- in worker threads ------------------------------------------------------------------------------

    def _current_sync(self, path: Path, session_id: str, cached: _Snapshot | None) -> _Snapshot | None:
        try:
            found = identity(os.stat(path))
            if cached is not None and cached.identity == found:
                return cached
            # Changed between stat and read? Then `found` is older than the content, and the next call's
            # stat differs from it again: the snapshot is re-read, never trusted stale.
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TranscriptStorageError(f"cannot read transcript {path}: {exc}") from exc
        try:
            transcript = parse_transcript(raw, session_id)
        except CorruptTranscriptError as exc:
            try:
                aside = set_aside(path)
            except OSError as rename_exc:
                raise TranscriptStorageError(
                    f"transcript {path} is corrupt ({exc}) and could not be set aside: {rename_exc}"
                ) from rename_exc
            log.error("transcript %s is corrupt (%s); kept as %s, starting a new one", path, exc, aside)
            return None
        return _Snapshot(found, transcript, render_block(transcript.messages))

    def _append_sync(
        self, path: Path, session_id: str, entries: tuple[ChatEntry, ...], cached: _Snapshot | None
    ) -> _Snapshot:
        now = utc_now_iso()
        current = self._current_sync(path, session_id, cached)
        if current is None:
            current = _Snapshot((0, 0, 0), Transcript(session_id, now, now), "")
        updated = current.transcript.appended(entries, now)
        new_lines = render_block(entries)
        block = f"{current.block},\n{new_lines}" if current.block else new_lines
        try:
            written = identity(write_atomic(path, render_document(updated, block), TRANSCRIPT_MODE))
        except OSError as exc:
            raise TranscriptStorageError(f"cannot write transcript {path}: {exc}") from exc
        return _Snapshot(written, updated, block)
