"""ServiceClient against a callee that closes a pooled connection as a request goes out on it.

The callee here is a raw asyncio HTTP/1.1 server on loopback that plays the three ways a connection can end
without an answer, so each case happens every time rather than by a race:
- a reused (keep-alive) connection closed before any answer: what uvicorn does to an idle connection on a
  graceful restart or at its keep-alive timeout. The app never saw the request: the client sends it once more,
  on a new connection, even a POST.
- a fresh connection closed before any answer: the callee may have run the request and died. Never resent.
- a reused connection closed after the response headers: the request ran. Never resent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from autobot.client.service_client import ServiceClient, ServiceUnavailableError
from autobot.security.keyring import Keyring

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
HEADERS_ONLY = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ok"'


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@dataclass
class Callee:
    """Answers the first request of each connection; what it does to the second is `second`
    ("answer", "close", "headers-then-close"). `first` may be "close" too (a fresh connection closed)."""

    first: str = "answer"
    second: str = "close"
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection number, request line)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            for behaviour in (self.first, self.second, "answer"):
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                await reader.readexactly(length)
                self.requests.append((number, head.split(b"\r\n", 1)[0]))
                if behaviour == "close":
                    return
                writer.write(ANSWER if behaviour == "answer" else HEADERS_ONLY)
                await writer.drain()
                if behaviour == "headers-then-close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


Start = Callable[[Callee], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(callee: Callee) -> str:
        server = await asyncio.start_server(callee.handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _client(url: str) -> ServiceClient:
    keyring = Keyring(service_id="main-backend", masters={1: bytes(32)})
    return ServiceClient("main-backend", keyring, {"npu-worker": url}, retries=0)


async def test_a_post_on_a_pooled_connection_closed_under_it_is_sent_once_more(serve: Start) -> None:
    callee = Callee(first="answer", second="close")
    async with _client(await serve(callee)) as client:
        assert (await client.post("npu-worker", "/api/process", json={"n": 1})).status_code == 200
        answer = await client.post("npu-worker", "/api/process", json={"n": 2})
    assert answer.status_code == 200
    # The second POST met the close on connection 1 and was answered on connection 2.
    assert callee.requests == [
        (1, b"POST /api/process HTTP/1.1"),
        (1, b"POST /api/process HTTP/1.1"),
        (2, b"POST /api/process HTTP/1.1"),
    ]


async def test_a_post_whose_fresh_connection_closes_is_not_sent_again(serve: Start) -> None:
    callee = Callee(first="close")
    async with _client(await serve(callee)) as client:
        with pytest.raises(ServiceUnavailableError, match="POST npu-worker/api/process"):
            await client.post("npu-worker", "/api/process", json={"n": 1})
    assert callee.requests == [(1, b"POST /api/process HTTP/1.1")]


async def test_a_post_answered_with_headers_before_the_close_is_not_sent_again(serve: Start) -> None:
    callee = Callee(first="answer", second="headers-then-close")
    async with _client(await serve(callee)) as client:
        await client.post("npu-worker", "/api/process", json={"n": 1})
        with pytest.raises(ServiceUnavailableError):
            await client.post("npu-worker", "/api/process", json={"n": 2})
    assert len(callee.requests) == 2
    assert callee.connections == 1


async def test_a_stream_on_a_pooled_connection_closed_under_it_is_sent_once_more(serve: Start) -> None:
    callee = Callee(first="answer", second="close")
    async with _client(await serve(callee)) as client:
        await client.post("npu-worker", "/api/process", json={"n": 1})
        async with client.stream("npu-worker", "POST", "/api/process", json={"n": 2}) as response:
            assert response.status_code == 200
            assert await response.aread() == b'{"ok":true}'
    assert [number for number, _ in callee.requests] == [1, 1, 2]
