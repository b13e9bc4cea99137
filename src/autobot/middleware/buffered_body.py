"""The request body as the service-auth middleware reads it: buffered up to a limit, then replayed to the app.

The verifier needs the whole body (its digest is signed) before the app may see any of it; the app then reads
the same bytes through `replaying_receive`, as if the middleware had never been there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from starlette.types import Message, Receive


@dataclass
class BufferedBody:
    chunks: list[bytes]
    more_after: bool = False  # the client still has body bytes we did not read
    too_large: bool = False
    disconnected: bool = False

    def joined(self) -> bytes:
        """The whole body, joined once (the verifier and the replay to the app share the one copy)."""
        if len(self.chunks) != 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0]


async def read_body(receive: Receive, limit: int, declared_length: int | None) -> BufferedBody:
    """Buffer the request body up to `limit` bytes; stop early (too_large) once it is exceeded."""
    if declared_length is not None and declared_length > limit:
        return BufferedBody(chunks=[], more_after=True, too_large=True)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return BufferedBody(chunks=chunks, disconnected=True)
        if message["type"] != "http.request":
            continue
        chunk = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return BufferedBody(chunks=chunks, more_after=more, too_large=True)
        if not more:
            return BufferedBody(chunks=chunks)


def replaying_receive(body: BufferedBody, receive: Receive) -> Receive:
    """A `receive` that first hands the app the bytes already read, then defers to the server."""
    if body.too_large:
        pending = deque(body.chunks)
        more_after = body.more_after
    else:
        pending = deque([body.joined()])
        more_after = False

    async def replay() -> Message:
        if pending:
            chunk = pending.popleft()
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or more_after}
        return await receive()

    return replay
