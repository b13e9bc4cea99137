"""Raw HTTP/1.1 requests over a loopback socket: every header sent is one the test wrote (no cookie jar, no
defaults a client library adds), and the response is parsed by h11 exactly as it came off the wire.

`local_address` binds the client side of the socket (any 127.0.0.0/8 address is loopback on Linux), so a test
can be a different peer than 127.0.0.1: how the trusted-proxy tests tell the frontend machine from a browser.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h11


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[-1] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str | None:
        """The `error` code of a JSON error body (None for anything else)."""
        try:
            body = self.json()
        except ValueError:
            return None
        return body.get("error") if isinstance(body, dict) else None


def multipart(
    field: str, filename: str, content: bytes, content_type: str = "text/plain"
) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field; returns (body, content type header)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def raw_request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    json_body: Any = None,
    body: bytes | None = None,
    cookie: str | None = None,
    local_address: str | None = None,
    timeout_s: float = 30.0,
) -> RawResponse:
    """One request on a fresh connection (Connection: close), the whole response read."""
    url = urllib.parse.urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    sent: list[tuple[str, str]] = [("Host", f"{host}:{port}"), ("Connection", "close"), *headers]
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent.append(("Content-Type", "application/json"))
    if cookie is not None:
        sent.append(("Cookie", cookie))
    payload = body or b""
    if body is not None or method in ("POST", "PUT", "PATCH"):
        sent.append(("Content-Length", str(len(payload))))
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(local_address, 0) if local_address else None
    )
    conn = h11.Connection(h11.CLIENT)
    try:
        writer.write(conn.send(h11.Request(method=method, target=path, headers=sent)))
        if payload:
            writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return await asyncio.wait_for(_read_response(conn, reader), timeout_s)
    finally:
        writer.close()
        await writer.wait_closed()


async def _read_response(conn: h11.Connection, reader: asyncio.StreamReader) -> RawResponse:
    status, headers, chunks = 0, [], []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return RawResponse(status, headers, b"".join(chunks))


def set_cookie_value(response: RawResponse, name: str = "autobot_client") -> str | None:
    """The value a Set-Cookie header of the response gives `name` (None if it sets none)."""
    for header in response.headers_named("set-cookie"):
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return None


def set_cookie_attributes(response: RawResponse, name: str = "autobot_client") -> Mapping[str, str]:
    """The attributes of the Set-Cookie header for `name`, lower-cased names ("" for flags)."""
    for header in response.headers_named("set-cookie"):
        key, _, rest = header.partition("=")
        if key.strip() == name:
            attributes: dict[str, str] = {}
            for part in rest.split(";")[1:]:
                attr, _, value = part.strip().partition("=")
                attributes[attr.lower()] = value
            return attributes
    return {}
