"""Service lifespans: resources opened on start-up are closed in reverse order on shutdown, and also when
start-up fails half way (so a failed start never leaks a pool or a file handle)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI
from redis.asyncio import Redis

from autobot.config import RedisConfig
from autobot.redis_pool import create_redis
from autobot.services.http.health import Readiness, redis_ping_check

LifespanSetup = Callable[[FastAPI, contextlib.AsyncExitStack], Awaitable[None]]
"""Opens a service's resources and registers closing them on the stack."""


def lifespan_with_stack(
    setup: LifespanSetup,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Build a lifespan from `setup(app, stack)`: setup opens resources and registers closing them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await setup(app, stack)
            yield

    return lifespan


def open_redis(config: RedisConfig, stack: contextlib.AsyncExitStack, readiness: Readiness) -> Redis:
    """Open the service's Redis client inside a lifespan: closed with `stack`, probed as readiness "redis".

    The readiness checks are cleared when the stack unwinds, so a stopped (or half-started) service never
    reports ready.
    """
    redis = create_redis(config)
    stack.push_async_callback(redis.aclose, close_connection_pool=True)
    readiness.add("redis", redis_ping_check(redis))
    stack.callback(readiness.clear)
    return redis
