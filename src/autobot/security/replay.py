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

Bounded waits: with `wait_s`, no request waits longer than that for its answer, whatever Redis does (down,
restarting, hung); it then gets ReplayStoreUnavailable. One timer per store does it (armed for the oldest
waiter, re-armed when it fires), so a request costs no timer of its own. The batch itself may stay on the
wire up to the connection's socket timeout; an answer that comes too late is dropped.

Group commit: the nonces of requests verified at the same time share one round trip. While one batch is on
the wire the next one gathers and goes out as one pipelined write when the first returns. A lone request
sends its SET alone. Requests that stopped waiting (their bound passed) are left out of later batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
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


# (key, this request's value, its future, when it stops waiting: loop time, or inf)
_Waiter = tuple[str, bytes, "asyncio.Future[bool]", float]


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
    def __init__(self, redis: Redis, ttl_s: int = 600, *, wait_s: float | None = None) -> None:
        if ttl_s < 1:
            raise ValueError("nonce ttl must be at least one second")
        if wait_s is not None and not wait_s > 0:
            raise ValueError("the wait for the replay store must be positive")
        self._pool = redis.connection_pool
        self._ttl = str(ttl_s).encode()
        self._wait_s = math.inf if wait_s is None else wait_s
        self._connection: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[_Waiter] = []
        self._in_flight: list[_Waiter] = []
        self._sender: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        # Per request values: a random prefix per store (128 bits) and a counter, unique across processes
        # and requests without asking the random source for every request.
        self._prefix = secrets.token_hex(16).encode() + b":"
        self._counter = itertools.count()

    async def remember(self, callee: str, caller: str, nonce: str) -> bool:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or a new event loop (the old one is gone): what waited there can never be answered,
            # and the old connection belongs to the old loop.
            self._loop, self._waiting, self._in_flight = loop, [], []
            self._sender = self._watchdog = self._connection = None
        future: asyncio.Future[bool] = loop.create_future()
        value = b"%s%d" % (self._prefix, next(self._counter))
        deadline = loop.time() + self._wait_s
        self._waiting.append((nonce_key(callee, caller, nonce), value, future, deadline))
        if self._watchdog is None and deadline != math.inf:
            self._watchdog = loop.call_at(deadline, self._expire)
        sender = self._sender
        if sender is None or sender.done():
            self._sender = loop.create_task(self._send_batches(), name="autobot-nonce-sender")
        return await future

    def _expire(self) -> None:
        """The watchdog: fail every waiter whose time is up, then wait for the next one to be."""
        assert self._loop is not None
        self._watchdog = None
        now = self._loop.time()
        next_deadline = math.inf
        for _, _, future, deadline in itertools.chain(self._in_flight, self._waiting):
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(ReplayStoreUnavailable("replay store unavailable: no answer in time"))
            else:
                next_deadline = min(next_deadline, deadline)
        if next_deadline != math.inf:
            self._watchdog = self._loop.call_at(next_deadline, self._expire)

    async def aclose(self) -> None:
        """Close the store's connection (on shutdown; a later `remember` would open a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    def _next_batch(self) -> list[_Waiter]:
        """Up to MAX_BATCH waiters still waiting (the others gave up: their time was up)."""
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
            batch = self._in_flight = self._next_batch()
            if not batch:
                continue
            try:
                replies = await self._send([(key, value) for key, value, _, _ in batch])
            except BaseException as exc:  # fail closed, including on cancellation: nobody waits forever
                for _, _, future, _ in batch:
                    if not future.done():
                        future.set_exception(_unavailable(exc))
                if not isinstance(exc, Exception):
                    for _, _, future, _ in self._waiting:
                        future.cancel()
                    self._waiting = []
                    raise
                continue
            finally:
                self._in_flight = []
            for (_, value, future, _), reply in zip(batch, replies, strict=True):
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
        anything else fails the whole batch. One timer bounds the whole exchange by the connection's socket
        timeout (not one timer per reply)."""
        connection = self._connection_for_send()
        packed = connection.pack_commands(
            [(b"SET", key, value, b"NX", b"GET", b"EX", self._ttl) for key, value in items]
        )
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(connection.socket_timeout):
                    await connection.send_packed_command(packed, check_health=False)
                    replies: list[Any] = []
                    for _ in items:
                        try:
                            replies.append(await connection.read_response(timeout=math.inf))
                        except ResponseError as exc:  # that command's error; the connection is still in step
                            replies.append(exc)
                    return replies
            except RedisConnectionError as exc:
                await connection.disconnect()
                if attempt == 2:
                    raise _unavailable(exc) from exc
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                await connection.disconnect()
                raise _unavailable(exc) from exc
            # Cancelled half way: redis-py has already dropped the connection (it may hold an unread reply).
        raise AssertionError("unreachable")
