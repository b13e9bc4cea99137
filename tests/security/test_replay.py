"""NonceStore against a real redis-server: one SET NX EX per nonce, shared round trips, fail closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from tests.support.redis_server import RedisServer, free_port, start_redis

from autobot.config import RedisConfig
from autobot.redis_pool import create_redis
from autobot.security.replay import NonceStore, ReplayStoreUnavailable, nonce_key


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private server: its command statistics count only this test's commands."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


async def _stats(admin: Redis) -> tuple[dict[str, int], int]:
    commands = await admin.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in commands.items()}
    connections = int((await admin.info("stats"))["total_connections_received"])
    return calls, connections


async def test_concurrent_nonces_are_one_set_each_over_one_pooled_connection(own_redis: RedisServer) -> None:
    redis = create_redis(RedisConfig(url=own_redis.url, max_connections=64))
    admin = Redis.from_url(own_redis.url)
    store = NonceStore(redis, 600)
    try:
        # The first request opens the pooled connection.
        assert await store.remember("npu-worker", "main-backend", "warm-up-nonce-0000")
        await admin.config_resetstat()
        _, connections_before = await _stats(admin)
        nonces = [f"nonce-{i:04d}-abcdefghijkl" for i in range(200)]
        results = await asyncio.gather(*(store.remember("npu-worker", "main-backend", n) for n in nonces))
        calls, connections_after = await _stats(admin)
        assert results == [True] * 200
        # Exactly one SET per nonce and no other command (the admin client's own CONFIG/INFO aside) ...
        assert {k: v for k, v in calls.items() if k not in ("config|resetstat", "info")} == {"set": 200}
        # ... and 200 simultaneous requests did not open 200 (or 64) connections: they shared round trips.
        assert connections_after == connections_before  # not one new connection
        assert 599 <= await admin.ttl(nonce_key("npu-worker", "main-backend", nonces[-1])) <= 600
    finally:
        await admin.aclose()
        await redis.aclose(close_connection_pool=True)


async def test_the_same_nonce_twice_at_once_is_accepted_once(redis_client: Redis) -> None:
    store = NonceStore(redis_client, 600)
    results = await asyncio.gather(
        *(store.remember("npu-worker", "ai-stack", "same-nonce-abcdefgh") for _ in range(5))
    )
    assert sorted(results) == [False, False, False, False, True]
    assert await store.remember("npu-worker", "ai-stack", "same-nonce-abcdefgh") is False


async def test_redis_down_fails_every_waiter_closed() -> None:
    dead = create_redis(RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", retries=0))
    store = NonceStore(dead, 600)
    try:
        results = await asyncio.gather(
            *(store.remember("npu-worker", "ai-stack", f"nonce-{i}-abcdefghijkl") for i in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ReplayStoreUnavailable) for r in results), results
    finally:
        await dead.aclose(close_connection_pool=True)


async def test_a_cancelled_request_does_not_disturb_the_others(redis_client: Redis) -> None:
    store = NonceStore(redis_client, 600)
    first = asyncio.create_task(store.remember("npu-worker", "ai-stack", "cancelled-abcdefghijkl"))
    others = [
        asyncio.create_task(store.remember("npu-worker", "ai-stack", f"other-{i}-abcdefghijkl"))
        for i in range(5)
    ]
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.gather(*others) == [True] * 5
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await store.remember("npu-worker", "ai-stack", "after-abcdefghijkl") is True
