"""Nonce store in Redis: each signed request is accepted once within the nonce lifetime.

Called only after the MAC verified, so unauthenticated traffic cannot fill the store. Any Redis failure raises
ReplayStoreUnavailable and the verifier answers 503: the check fails closed.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError


class ReplayStoreUnavailable(Exception):
    """Redis could not be asked whether a nonce was seen (down, timeout, ACL refusal)."""


class NonceChecker(Protocol):
    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        """Record the nonce; True if it was new, False if it was seen before."""
        ...


def nonce_key(callee: str, caller: str, nonce: str) -> str:
    return f"nonce:{callee}:{caller}:{nonce}"


class NonceStore:
    def __init__(self, redis: Redis, ttl_s: int = 600) -> None:
        if ttl_s < 1:
            raise ValueError("nonce ttl must be at least one second")
        self._redis = redis
        self._ttl_s = ttl_s

    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        try:
            stored = await self._redis.set(nonce_key(callee, caller, nonce), 1, nx=True, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            raise ReplayStoreUnavailable(f"replay store unavailable: {type(exc).__name__}") from exc
        return bool(stored)
