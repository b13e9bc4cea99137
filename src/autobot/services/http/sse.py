"""Server-sent events, as the streaming chat route sends them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    """Encode one server-sent event; JSON data stays on one line, so no payload can break the framing."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()
