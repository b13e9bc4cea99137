"""uvicorn's httptools protocol with a bound on the request head, and a first request kept through a restart.

1. The bound on the request head (request line and headers).

httptools keeps a header it has not finished parsing in memory, however long it grows, and uvicorn offers
no limit for it (only its h11 protocol has one, at a large cost in speed). So a stranger could make a service
buffer megabytes of headers before any of our code (the service-auth middleware included) saw the request.
This protocol counts the bytes received while a request's head is incomplete and answers 431, closing the
connection, once they pass the bound. Counting happens after httptools has parsed the chunk, so a chunk that
completes the head is never held against it; a pipelined request right behind a large body in one chunk could
be counted a little high, which only matters for heads close to the bound.

2. A graceful stop (a restart, a phase swap, a release flip) closes every connection with no request in
progress. That is right for a kept-alive connection between requests: its client knows it may be closed and
resends on a new one. It is wrong for a connection accepted moments before the stop whose first request has
not arrived yet (or not whole): its client sent a request on a new connection and gets a broken pipe for it,
though the app never saw it (seen under the phases scenario's traffic while main-backend restarted). Such a
connection gets FIRST_REQUEST_GRACE_S for its first request, which is then served with `Connection: close`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEAD_BYTES = 32 * 1024
FIRST_REQUEST_GRACE_S = 1.0
_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
)
_BODY = b'{"error":"request_header_fields_too_large","detail":"the request line and headers are too large"}'


def bounded_head_protocol(max_head_bytes: int) -> type[HttpToolsProtocol]:
    """A uvicorn `http` protocol class refusing request heads longer than `max_head_bytes`."""

    class BoundedHeadProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._in_head = True
            self._heads = 0  # requests whose head arrived on this connection
            self._last_request = False  # a stop began before the first request: serve it, then close

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._heads += 1
            super().on_headers_complete()
            if self._last_request:
                self.cycle.keep_alive = False

        def shutdown(self) -> None:
            if self._heads == 0 and self.cycle is None and not self.transport.is_closing():
                self._last_request = True
                self.loop.call_later(FIRST_REQUEST_GRACE_S, self._close_if_still_waiting)
                return
            super().shutdown()

        def _close_if_still_waiting(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            self._head_bytes += len(data)
            if self._head_bytes > max_head_bytes:
                self.transport.write(
                    _REFUSAL + b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
                )
                self.transport.close()

    BoundedHeadProtocol.__qualname__ = f"BoundedHeadProtocol[{max_head_bytes}]"
    return BoundedHeadProtocol
