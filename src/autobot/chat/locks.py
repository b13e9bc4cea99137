"""Concurrency limits of the chat path, in one event loop.

`KeyedLocks`: one asyncio.Lock per key, created on demand and dropped when nobody holds or waits for it.

A plain dict of locks would grow by one entry per session ever seen; counting users keeps it bounded by the
number of sessions active right now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            # Runs on cancellation too, so a cancelled waiter never leaks its count.
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class BoundedSlots:
    """At most `capacity` holders at a time; a caller waits at most `wait_s` for a slot.

    The chat workflow holds one around each piece of Redis work, with the capacity of the Redis pool: then
    the pool itself never runs dry (which redis-py reports like a refused connection), and a caller that
    gets no slot in time is told "busy, retry" before anything was stored.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._semaphore = asyncio.Semaphore(capacity)

    @contextlib.asynccontextmanager
    async def hold(self, wait_s: float) -> AsyncIterator[bool]:
        """Yields True with a slot held, or False when none became free within `wait_s` seconds."""
        try:
            async with asyncio.timeout(wait_s):
                await self._semaphore.acquire()
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            self._semaphore.release()
