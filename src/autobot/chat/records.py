"""The transcript file formats, pure: bytes in, records out (no I/O; transcripts.py does the files).

A transcript is a JSON-lines file, one record per message, only ever appended to:

    {"seq":12,"id":"…","role":"user","content":"…","ts":"…","crc32":"1a2b3c4d"}

`seq` is the message's 1-based position in the session's whole history (pagination cursors refer to it, and
it lets a reader find a page by binary search). `crc32` is the CRC-32 of the line's bytes before
`,"crc32"`: a record torn by a crash, or changed on disk, is recognised on its own, without trusting the
lines around it. The JSON is ASCII (non-ASCII escaped), the encoding of the entries in Redis too, so every
string the API accepted can be written and one line is exactly one record.

The previous format, one JSON document per session rewritten on every turn, is still read here
(`parse_legacy`): transcripts.py migrates such a file on its first append.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autobot.chat.entries import ChatEntry, CorruptEntryError, StoredEntry

_SUFFIX = re.compile(rb',"crc32":"([0-9a-f]{8})"\}\Z')
_SUFFIX_LENGTH = len(b',"crc32":"00000000"}')


class CorruptRecordError(ValueError):
    """A transcript line is not a record this module wrote (torn, changed, or not ours)."""


class CorruptTranscriptError(ValueError):
    """A transcript in the previous (one JSON document) format is not one this package wrote."""


def _json_object(raw: bytes, error: type[ValueError]) -> dict[str, Any]:
    """`raw` parsed as a JSON object, else `error` saying why."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error("not a JSON object")
    return data


def encode_record(seq: int, entry: ChatEntry) -> bytes:
    """One record, newline included."""
    body = json.dumps({"seq": seq, **entry.to_dict()}, separators=(",", ":")).encode("ascii")
    head = body[:-1]  # without the closing brace, which follows the checksum
    return head + b',"crc32":"%08x"}\n' % zlib.crc32(head)


def encode_records(first_seq: int, entries: Sequence[ChatEntry]) -> bytes:
    return b"".join(encode_record(first_seq + i, e) for i, e in enumerate(entries))


def decode_record(line: bytes) -> StoredEntry:
    """Parse and check one line (without its newline); CorruptRecordError says why it is not a record."""
    match = _SUFFIX.match(line, max(0, len(line) - _SUFFIX_LENGTH))
    if match is None:
        raise CorruptRecordError("no checksum at the end of the line (torn or not a record)")
    head = line[:-_SUFFIX_LENGTH]
    if zlib.crc32(head) != int(match.group(1), 16):
        raise CorruptRecordError("checksum mismatch")
    data = _json_object(line, CorruptRecordError)
    seq = data.get("seq")
    if type(seq) is not int or seq < 1:
        raise CorruptRecordError(f"seq must be a positive integer, not {seq!r}")
    try:
        return StoredEntry(ChatEntry.from_dict(data), seq)
    except CorruptEntryError as exc:
        raise CorruptRecordError(str(exc)) from exc


def record_seq(line: bytes) -> int | None:
    """The seq of a valid record, None for any other line (what a binary search needs)."""
    try:
        return decode_record(line).seq
    except CorruptRecordError:
        return None


@dataclass(frozen=True, slots=True)
class LegacyTranscript:
    session_id: str
    created_at: str
    updated_at: str
    messages: tuple[ChatEntry, ...]

    def stored(self) -> list[StoredEntry]:
        return [StoredEntry(e, i + 1) for i, e in enumerate(self.messages)]


def parse_legacy(raw: bytes, session_id: str) -> LegacyTranscript:
    """Parse and check a transcript in the previous format, {session_id, created_at, updated_at,
    message_count, messages: [...]}; raise CorruptTranscriptError with the reason."""
    doc = _json_object(raw, CorruptTranscriptError)
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
    return LegacyTranscript(session_id, created_at, updated_at, entries)
