"""Server-sent events, as the streaming chat route sends them, and the heartbeat between them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    """Encode one server-sent event; JSON data stays on one line, so no payload can break the framing."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


# A comment line: clients ignore it (EventSource and the UI's parser alike), proxies see bytes flowing.
HEARTBEAT = b": ping\n\n"


async def with_heartbeat(events: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """Pass `events` through, adding HEARTBEAT whenever `interval_s` passes without one (a silent model).

    The next event is awaited in a task of its own so that waiting can time out without cancelling it; the
    iterator is never advanced twice at once. Closing this generator (the client went away) cancels the
    pending step, which closes `events` the way a cancelled consumer would.
    """
    iterator = aiter(events)

    async def step() -> bytes | None:
        try:
            return await anext(iterator)
        except StopAsyncIteration:
            return None  # the end, told without an exception crossing the task boundary

    pending: asyncio.Task[bytes | None] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(step())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield HEARTBEAT
                continue
            event = pending.result()
            pending = None
            if event is None:
                return
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved, so asyncio does not log it as forgotten
        if isinstance(iterator, AsyncGenerator):
            await iterator.aclose()
