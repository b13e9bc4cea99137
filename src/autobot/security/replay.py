"""Nonce store in Redis: each signed request is accepted once within the nonce lifetime.

Called only after the MAC verified, so unauthenticated traffic cannot fill the store. Any Redis failure raises
ReplayStoreUnavailable and the verifier answers 503: the check fails closed.

Each nonce is one `SET nonce:<callee>:<caller>:<nonce> 1 NX EX <ttl>`, nothing else. The nonces of requests
verified at the same time share one round trip: while one batch is on the wire, the next one gathers, and
goes out as a single pipeline (no MULTI) when the first returns. A lone request sends its SET alone. This is
group commit: under load it costs one pooled connection and one round trip per batch instead of per request,
and redis-py's per-command overhead (tens of microseconds) is paid once per batch where it can be.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

# Upper bound on one pipeline, so a burst does not turn into one huge write and reply.
MAX_BATCH = 256


class ReplayStoreUnavailable(Exception):
    """Redis could not be asked whether a nonce was seen (down, timeout, ACL refusal)."""


class NonceChecker(Protocol):
    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        """Record the nonce; True if it was new, False if it was seen before."""
        ...


def nonce_key(callee: str, caller: str, nonce: str) -> str:
    return f"nonce:{callee}:{caller}:{nonce}"


_Waiter = tuple[str, "asyncio.Future[bool]"]


def _unavailable(exc: BaseException) -> ReplayStoreUnavailable:
    return ReplayStoreUnavailable(f"replay store unavailable: {type(exc).__name__}")


class NonceStore:
    def __init__(self, redis: Redis, ttl_s: int = 600) -> None:
        if ttl_s < 1:
            raise ValueError("nonce ttl must be at least one second")
        self._redis = redis
        self._ttl_s = ttl_s
        self._waiting: list[_Waiter] = []
        self._sender: asyncio.Task[None] | None = None

    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        loop = asyncio.get_running_loop()
        sender = self._sender
        if sender is not None and not sender.done() and sender.get_loop() is not loop:
            # Used from a new event loop (the old one is gone): what waited there can never be answered.
            self._waiting, sender = [], None
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((nonce_key(callee, caller, nonce), future))
        if sender is None or sender.done():
            self._sender = loop.create_task(self._send_batches(), name="autobot-nonce-sender")
        return await future

    async def _send_batches(self) -> None:
        """Send what is waiting, batch after batch, until nothing is; one batch in flight at a time."""
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                results = await self._send([key for key, _ in batch])
            except BaseException as exc:  # fail closed, including on cancellation: nobody waits forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(_unavailable(exc))
                if not isinstance(exc, Exception):
                    for _, future in self._waiting:
                        future.cancel()
                    self._waiting = []
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the request was cancelled meanwhile; its nonce is recorded anyway
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(_unavailable(result))
                else:
                    future.set_result(bool(result))

    async def _send(self, keys: list[str]) -> list[object]:
        """SET NX EX for each key; per-key results (True/None, or the error of that command)."""
        try:
            if len(keys) == 1:
                return [await self._redis.set(keys[0], 1, nx=True, ex=self._ttl_s)]
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, 1, nx=True, ex=self._ttl_s)
            return list(await pipe.execute(raise_on_error=False))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
