"""The chat message type shared by the context window, the LLM providers and chat history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_dict(cls, data: object) -> Message:
        """Parse one message, refusing anything that is not {role, content} with a known role."""
        if not isinstance(data, dict):
            raise ValueError("a message must be an object with 'role' and 'content'")
        role, content = data.get("role"), data.get("content")
        if role not in ROLES:
            raise ValueError(f"unknown message role {role!r}")
        if not isinstance(content, str):
            raise ValueError("message content must be a string")
        return cls(role=role, content=content)
