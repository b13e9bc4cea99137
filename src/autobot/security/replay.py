"""Nonce store in Redis: each signed request is accepted once within the nonce lifetime.

Called only after the request authenticated, so unauthenticated traffic cannot fill the store. A Redis that
cannot answer raises ReplayStoreUnavailable and the verifier answers 503: the check fails closed.

Each nonce is one `SET nonce:<callee>:<caller>:<nonce> <value> NX GET EX <ttl>` (Redis >= 7.0), where
<value> is unique to this request. The reply says which case it is: nil, the key was new and is now set;
<value> itself, the key was set by this very request, whose first reply was lost; anything else, a replay.
So a command can be sent again after a lost reply without turning the request into a false replay (a plain
`SET NX` would answer "exists" to its own first write).

Send and retry: the store talks over ONE connection of its own (redis-py's `Connection`, configured like
the client it is given). On a connection error (a Redis restart, a killed or stale connection) the batch is
sent once more on a fresh connection; a timeout is not retried (a hung Redis would only be asked twice).
How long a request waits is bounded by its caller (`VerifyContext.replay_timeout_s`), not here.

Group commit: the nonces of requests verified at the same time share one round trip. While one batch is on
the wire the next one gathers and goes out as one pipelined write when the first returns. A lone request
sends its SET alone. Requests that stopped waiting (their bound passed) are left out of later batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

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


# (key, this request's value, its future)
_Waiter = tuple[str, bytes, "asyncio.Future[bool]"]


def _unavailable(exc: BaseException) -> ReplayStoreUnavailable:
    return ReplayStoreUnavailable(f"replay store unavailable: {type(exc).__name__}")


def first_use(reply: object, value: bytes) -> bool:
    """What the reply to `SET key value NX GET` means: True for a first use, False for a replay."""
    if reply is None:
        return True  # the key did not exist; it does now
    if isinstance(reply, str):  # a client built with decode_responses=True
        reply = reply.encode()
    return reply == value  # our own earlier write whose reply was lost: still this request's first use


class NonceStore:
    def __init__(self, redis: Redis, ttl_s: int = 600) -> None:
        if ttl_s < 1:
            raise ValueError("nonce ttl must be at least one second")
        self._pool = redis.connection_pool
        self._ttl = str(ttl_s).encode()
        self._connection: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[_Waiter] = []
        self._sender: asyncio.Task[None] | None = None
        # Per request values: a random prefix per store (128 bits) and a counter, unique across processes
        # and requests without asking the random source for every request.
        self._prefix = secrets.token_hex(16).encode() + b":"
        self._counter = itertools.count()

    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or a new event loop (the old one is gone): what waited there can never be answered,
            # and the old connection belongs to the old loop.
            self._loop, self._waiting, self._sender, self._connection = loop, [], None, None
        future: asyncio.Future[bool] = loop.create_future()
        value = b"%s%d" % (self._prefix, next(self._counter))
        self._waiting.append((nonce_key(callee, caller, nonce), value, future))
        sender = self._sender
        if sender is None or sender.done():
            self._sender = loop.create_task(self._send_batches(), name="autobot-nonce-sender")
        return await future

    async def aclose(self) -> None:
        """Close the store's connection (on shutdown; a later `remember` would open a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    def _next_batch(self) -> list[_Waiter]:
        """Up to MAX_BATCH waiters still waiting (the others gave up: their bound passed)."""
        batch: list[_Waiter] = []
        taken = 0
        while taken < len(self._waiting) and len(batch) < MAX_BATCH:
            waiter = self._waiting[taken]
            taken += 1
            if not waiter[2].done():
                batch.append(waiter)
        del self._waiting[:taken]
        return batch

    async def _send_batches(self) -> None:
        """Send what is waiting, batch after batch, until nothing is; one batch in flight at a time."""
        while self._waiting:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                replies = await self._send([(key, value) for key, value, _ in batch])
            except BaseException as exc:  # fail closed, including on cancellation: nobody waits forever
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(_unavailable(exc))
                if not isinstance(exc, Exception):
                    for _, _, future in self._waiting:
                        future.cancel()
                    self._waiting = []
                    raise
                continue
            for (_, value, future), reply in zip(batch, replies, strict=True):
                if future.done():  # the request stopped waiting meanwhile; its nonce is recorded anyway
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(_unavailable(reply))
                else:
                    future.set_result(first_use(reply, value))

    def _connection_for_send(self) -> AbstractConnection:
        if self._connection is None:
            # Configured like the client's pool (address, ACL user, password, db, timeouts, client name),
            # but not taken from it: this connection is the store's alone, so its state is known here.
            self._connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        return self._connection

    async def _send(self, items: list[tuple[str, bytes]]) -> list[Any]:
        """`SET key value NX GET EX ttl` for each item, pipelined; per-item replies (or that item's error).

        A connection error (reset, closed by the server, refused) is retried once on a fresh connection;
        anything else fails the whole batch."""
        connection = self._connection_for_send()
        packed = connection.pack_commands(
            [(b"SET", key, value, b"NX", b"GET", b"EX", self._ttl) for key, value in items]
        )
        for attempt in (1, 2):
            try:
                await connection.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in items:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as exc:  # that command's error; the connection is still in step
                        replies.append(exc)
                return replies
            except RedisConnectionError as exc:
                await connection.disconnect()
                if attempt == 2:
                    raise _unavailable(exc) from exc
            except (RedisError, OSError) as exc:
                await connection.disconnect()
                raise _unavailable(exc) from exc
            # Cancelled half way: redis-py has already dropped the connection (it may hold an unread reply).
        raise AssertionError("unreachable")
