"""Issue 13 items 8 and 9: the replay store (Redis) restarted, its connection killed, a reply lost, the
server hung. A real redis-server each time, restarted or stopped (SIGSTOP) by its PID.

A restart or a dropped connection must cost no legitimate request, and a lost reply must never turn into a
false replay. A hung Redis must hold the logging phase no longer than its budget and the enforcement phase
no longer than its own bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.security.auth_support import serving
from tests.security.deployment import Deployment, Phase
from tests.support.redis_server import RedisServer, start_redis

from autobot.client.service_client import ServiceClient
from autobot.security.keyring import Keyring
from autobot.security.replay import NonceStore, nonce_key


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)  # never leave a stopped server behind
        server.stop()


def _restart(server: RedisServer) -> RedisServer:
    """Stop the server and start a new one on the same port (the clients' address does not change)."""
    server.stop()
    return start_redis(server.workdir, port=server.port)


class ReplyDroppingProxy:
    """A TCP proxy in front of Redis that can lose one reply: the command reaches Redis and is executed, but
    its answer never reaches the client, whose connection is closed instead (a network cut at the worst
    moment)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop_next_reply = False
        self.dropped = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def to_redis() -> None:
            while data := await client_reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if self.drop_next_reply:
                    self.drop_next_reply = False
                    self.dropped += 1
                    client_writer.transport.abort()
                    up_writer.close()
                    return
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        for pump in (to_redis(), to_client()):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


# --- the nonce store itself ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _store(url: str) -> AsyncIterator[NonceStore]:
    client = Redis.from_url(url)
    store = NonceStore(client, 600)
    try:
        yield store
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_lost_reply_is_not_taken_for_a_replay(own_redis: RedisServer) -> None:
    admin = Redis.from_url(own_redis.url)
    async with ReplyDroppingProxy(own_redis.port) as proxy, _store(proxy.url) as store:
        assert await store.remember("npu-worker", "main-backend", "warm-up-nonce-00000")
        proxy.drop_next_reply = True
        # The SET reached Redis, its reply was lost, the connection cut: retried once on a fresh
        # connection, the key is found holding this request's own value, so this is the first use.
        assert await store.remember("npu-worker", "main-backend", "lost-reply-nonce-0001") is True
        assert proxy.dropped == 1
        assert proxy.connections == 2
        # ... and a real replay of that nonce is still refused.
        assert await store.remember("npu-worker", "main-backend", "lost-reply-nonce-0001") is False
    assert await admin.exists(nonce_key("npu-worker", "main-backend", "lost-reply-nonce-0001")) == 1
    await admin.aclose()


async def test_each_request_stores_its_own_value(own_redis: RedisServer) -> None:
    admin = Redis.from_url(own_redis.url)
    async with _store(own_redis.url) as store:
        nonces = [f"own-value-nonce-{i:04d}" for i in range(3)]
        assert (
            await asyncio.gather(*(store.remember("npu-worker", "ai-stack", n) for n in nonces)) == [True] * 3
        )
    values = {await admin.get(nonce_key("npu-worker", "ai-stack", n)) for n in nonces}
    assert len(values) == 3  # per request, so "the key holds MY value" identifies one request only
    await admin.aclose()


async def test_a_restart_and_a_killed_connection_cost_no_request(own_redis: RedisServer) -> None:
    async with _store(own_redis.url) as store:
        assert await store.remember("npu-worker", "main-backend", "before-restart-0001")
        server = _restart(own_redis)
        try:
            assert await store.remember("npu-worker", "main-backend", "after-restart-00001") is True
            admin = Redis.from_url(server.url)
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
            assert await store.remember("npu-worker", "main-backend", "after-kill-0000001") is True
            # Seen before the connection was killed: still a replay.
            assert await store.remember("npu-worker", "main-backend", "after-kill-0000001") is False
            await admin.aclose()
        finally:
            server.stop()


# --- over HTTP, through the deployed entry files -------------------------------------------------------


@pytest.fixture
def deploy(tmp_path: Path, key_root: Path) -> Callable[..., Deployment]:
    def make(phase: Phase, redis_url: str, **security: Any) -> Deployment:
        # A long socket timeout: what bounds a request must be the phase's own budget, never this.
        return Deployment(
            tmp_path / phase, key_root, phase, redis_url, redis={"socket_timeout_s": 10}, security=security
        )

    return make


def _client(keyrings: dict[str, Keyring], base_url: str) -> ServiceClient:
    return ServiceClient(
        "main-backend", keyrings["main-backend"], {"npu-worker": base_url}, timeout=30, retries=0
    )


async def test_first_request_after_a_redis_restart_is_accepted(
    deploy: Callable[..., Deployment], keyrings: dict[str, Keyring], own_redis: RedisServer
) -> None:
    deployment = deploy("enforcement", own_redis.url)
    async with serving(deployment.app()) as base_url, _client(keyrings, base_url) as main:
        assert (await main.post("npu-worker", "/api/process", json={})).status_code == 200
        server = _restart(own_redis)
        try:
            statuses = [
                (await main.post("npu-worker", "/api/process", json={})).status_code for _ in range(3)
            ]
        finally:
            server.stop()
    assert statuses == [200, 200, 200]


@contextlib.contextmanager
def _hung(server: RedisServer) -> Iterator[None]:
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def _timed_posts(main: ServiceClient, count: int) -> list[tuple[int, float, dict[str, Any]]]:
    async def one() -> tuple[int, float, dict[str, Any]]:
        started = time.perf_counter()
        response = await main.post("npu-worker", "/api/process", json={})
        return response.status_code, time.perf_counter() - started, response.json()

    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.parametrize(
    ("phase", "setting", "bound_ms", "status"),
    [
        ("logging", "logging_replay_budget_ms", 50, 200),
        ("enforcement", "enforcement_replay_timeout_ms", 300, 503),
    ],
)
async def test_a_hung_redis_holds_each_phase_only_for_its_own_bound(
    phase: Phase,
    setting: str,
    bound_ms: int,
    status: int,
    deploy: Callable[..., Deployment],
    keyrings: dict[str, Keyring],
    own_redis: RedisServer,
) -> None:
    """Redis stopped with SIGSTOP: its socket accepts but never answers. With a 10 s socket timeout, each
    request is answered after the phase's bound (logging: passed on; enforcement: 503), not after 10-20 s.
    Once Redis runs again, requests are accepted again."""
    deployment = deploy(phase, own_redis.url, **{setting: bound_ms})
    async with serving(deployment.app()) as base_url, _client(keyrings, base_url) as main:
        assert (await main.post("npu-worker", "/api/process", json={})).status_code == 200
        with _hung(own_redis):
            hung = await _timed_posts(main, 20)
        after = await _timed_posts(main, 3)
    slowest = max(elapsed for _, elapsed, _ in hung)
    print(f"\n{phase}: bound {bound_ms} ms, 20 requests while Redis hung, slowest {slowest * 1000:.0f} ms")
    assert {s for s, _, _ in hung} == {status}
    assert slowest < 5.0  # the bound, plus scheduling; never the 10 s socket timeout
    if phase == "logging":
        assert {tuple(body["decision"][:2]) for _, _, body in hung} == {(503, "replay_store_unavailable")}
    else:
        assert {body["detail"] for _, _, body in hung} == {"replay_store_unavailable"}
    assert [s for s, _, _ in after] == [200, 200, 200]
    reasons = [(line["reason"], line["phase"]) for line in deployment.audit_lines()]
    assert reasons.count(("replay_store_unavailable", phase)) == 20
