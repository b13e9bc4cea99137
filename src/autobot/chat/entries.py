"""One stored chat message, and the session id rules: pure data and parsing, no I/O.

The same JSON object ({id, role, content, ts}) is stored in the Redis list and in the transcript, so a
transcript can be replayed into Redis without conversion.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autobot.messages import ROLES, Message, Role

# Session ids become Redis key suffixes and file names, so only a safe charset is accepted: no '/', '.',
# ':' or whitespace means no path traversal, no hidden files and no clash with the key layout.
SESSION_ID_MAX_LENGTH = 128
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class InvalidSessionIdError(ValueError):
    """The session id is empty, too long or uses characters outside [A-Za-z0-9_-]."""


class CorruptEntryError(ValueError):
    """A stored chat entry is not the JSON object this module writes."""


def validate_session_id(session_id: object) -> str:
    """Return the session id unchanged if it is safe to use as a key and a file name, else raise."""
    if not isinstance(session_id, str):
        raise InvalidSessionIdError("session id must be a string")
    if not session_id or len(session_id) > SESSION_ID_MAX_LENGTH:
        raise InvalidSessionIdError(
            f"session id must be 1 to {SESSION_ID_MAX_LENGTH} characters long, got {len(session_id)}"
        )
    if _SESSION_ID_RE.fullmatch(session_id) is None:
        raise InvalidSessionIdError(
            "session id may contain only letters, digits, '-' and '_', and must start with a letter or digit"
        )
    return session_id


def utc_now_iso() -> str:
    """UTC timestamp with microseconds and a 'Z' suffix, the one format used for every stored time."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ChatEntry:
    id: str
    role: Role
    content: str
    ts: str

    @classmethod
    def new(cls, role: Role, content: str) -> ChatEntry:
        return cls(id=uuid.uuid4().hex, role=role, content=content, ts=utc_now_iso())

    def to_message(self) -> Message:
        return Message(role=self.role, content=self.content)

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "role": self.role, "content": self.content, "ts": self.ts}

    def to_json(self) -> bytes:
        # Compact and ASCII-safe: the bytes in Redis are what the transcript holds.
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_dict(cls, data: object) -> ChatEntry:
        if not isinstance(data, dict):
            raise CorruptEntryError(f"chat entry must be an object, not {type(data).__name__}")
        fields: dict[str, Any] = data
        role = fields.get("role")
        if role not in ROLES:
            raise CorruptEntryError(f"chat entry has unknown role {role!r}")
        entry_id, content, ts = fields.get("id"), fields.get("content"), fields.get("ts")
        if not isinstance(entry_id, str) or not entry_id:
            raise CorruptEntryError("chat entry field 'id' must be a non-empty string")
        if not isinstance(content, str):
            raise CorruptEntryError("chat entry field 'content' must be a string")
        if not isinstance(ts, str):
            raise CorruptEntryError("chat entry field 'ts' must be a string")
        return cls(id=entry_id, role=role, content=content, ts=ts)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ChatEntry:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptEntryError(f"chat entry is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry with its sequence number: its 1-based position in the session's whole history, the same in
    the transcript and in Redis (pagination cursors refer to it)."""

    entry: ChatEntry
    seq: int

    def to_dict(self) -> dict[str, str | int]:
        return {**self.entry.to_dict(), "seq": self.seq}
