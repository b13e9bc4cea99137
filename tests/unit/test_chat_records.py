"""The transcript line format and the previous one-document format: pure encoding and checking."""

from __future__ import annotations

import json

import pytest

from autobot.chat.entries import ChatEntry, StoredEntry
from autobot.chat.records import (
    CorruptRecordError,
    CorruptTranscriptError,
    decode_record,
    encode_record,
    encode_records,
    parse_legacy,
    record_seq,
)


def test_a_record_is_one_json_line_with_its_sequence_number_and_checksum() -> None:
    entry = ChatEntry.new("user", 'héllo "world"\n\u2028 🙂')
    line = encode_record(7, entry)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # newlines in content are escaped: one line is one record
    doc = json.loads(line)
    assert list(doc) == ["seq", "id", "role", "content", "ts", "crc32"]
    assert doc["seq"] == 7
    assert doc["content"] == entry.content
    assert line.isascii()
    assert decode_record(line[:-1]) == StoredEntry(entry, 7)


def test_any_string_the_api_accepts_can_be_written() -> None:
    # json.loads accepts a lone surrogate, so a request can carry one; UTF-8 cannot encode it.
    entry = ChatEntry.new("user", "broken \ud800 pair")
    assert decode_record(encode_record(1, entry).rstrip(b"\n")).entry == entry


def test_records_number_consecutively() -> None:
    entries = [ChatEntry.new("user", str(i)) for i in range(3)]
    lines = encode_records(5, entries).splitlines()
    assert [decode_record(line).seq for line in lines] == [5, 6, 7]


def test_every_byte_of_a_record_is_covered_by_its_checksum() -> None:
    line = encode_record(3, ChatEntry.new("assistant", "the answer is 42")).rstrip(b"\n")
    for index in range(len(line)):
        changed = bytearray(line)
        changed[index] ^= 0x01
        assert record_seq(bytes(changed)) is None, f"a change at byte {index} went unnoticed"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"", "no checksum"),
        (b'{"seq":1,"id":"a","role":"user","content":"x","ts":"t"}', "no checksum"),
        (b'{"seq":1,"id":"a","role":"user","content":"x","ts":"t","crc32":"00000000"}', "checksum mismatch"),
    ],
)
def test_lines_that_are_not_records_are_refused(line: bytes, why: str) -> None:
    with pytest.raises(CorruptRecordError, match=why):
        decode_record(line)


def test_a_torn_record_is_refused_at_every_length() -> None:
    line = encode_record(1, ChatEntry.new("user", "a sentence cut short by a crash")).rstrip(b"\n")
    for length in range(len(line)):
        assert record_seq(line[:length]) is None


def _legacy(**overrides: object) -> bytes:
    entry = ChatEntry.new("user", "hi")
    doc: dict[str, object] = {
        "session_id": "s1",
        "created_at": "2025-01-01T00:00:00.000000Z",
        "updated_at": "2025-01-01T00:00:00.000000Z",
        "message_count": 1,
        "messages": [entry.to_dict()],
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_the_previous_format_is_parsed_with_sequence_numbers() -> None:
    entries = [ChatEntry.new("user", "q"), ChatEntry.new("assistant", "a")]
    raw = _legacy(message_count=2, messages=[e.to_dict() for e in entries])
    legacy = parse_legacy(raw, "s1")
    assert legacy.messages == tuple(entries)
    assert legacy.stored() == [StoredEntry(entries[0], 1), StoredEntry(entries[1], 2)]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (_legacy(session_id="other"), "session_id"),
        (_legacy(messages="x"), "messages must be a list"),
        (_legacy(message_count=2), "message_count"),
        (_legacy(created_at=None), "must be strings"),
        (_legacy(messages=[{"role": "user"}]), "'id'"),
    ],
)
def test_corrupt_transcripts_in_the_previous_format_are_recognised(raw: bytes, why: str) -> None:
    with pytest.raises(CorruptTranscriptError, match=why):
        parse_legacy(raw, "s1")
