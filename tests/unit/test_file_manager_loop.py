"""The manager's work happens off the event loop: a ticker keeps running while a large file is handled."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from autobot.storage import ConversationFileManager

T = TypeVar("T")
SIZE = 48 * 1024 * 1024  # large enough that hashing + writing + fsync take tens of milliseconds


async def ticks_during(operation: Callable[[], Awaitable[T]]) -> tuple[T, int, float]:
    """Run ``operation`` while a 1 ms ticker runs; return its result, the ticks seen and its duration."""
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)  # the ticker is up
    start_ticks = ticks
    started = time.perf_counter()
    result = await operation()
    elapsed = time.perf_counter() - started
    seen = ticks - start_ticks
    running = False
    await task
    return result, seen, elapsed


async def test_the_probe_detects_a_blocked_loop() -> None:
    content = b"x" * SIZE

    async def blocking() -> str:
        return hashlib.sha256(content).hexdigest()  # on the loop: nothing else can run

    _, seen, _ = await ticks_during(blocking)
    assert seen <= 1


async def test_add_and_read_a_large_file_without_blocking_the_loop(tmp_path: Path) -> None:
    manager = ConversationFileManager(tmp_path / "files.db", tmp_path / "files", max_file_bytes=SIZE)
    await manager.initialize()
    content = b"x" * SIZE

    record, seen, elapsed = await ticks_during(lambda: manager.add_file("s1", "big.bin", content))
    assert record.file_size == SIZE
    # A blocking implementation shows 0-1 ticks however long it takes; off the loop the ticker keeps going.
    # (The threshold is low on purpose: on a loaded machine the worker thread may get little CPU.)
    assert seen >= 2, f"only {seen} ticks in {elapsed * 1000:.0f} ms"

    data, seen, elapsed = await ticks_during(lambda: manager.read_content(record.file_id))
    assert len(data) == SIZE
    assert seen >= 2, f"only {seen} ticks in {elapsed * 1000:.0f} ms"


async def test_the_operation_yields_to_the_loop_before_it_completes(tmp_path: Path) -> None:
    """Independent of timing: a blocking implementation finishes within its first step on the loop."""
    manager = ConversationFileManager(tmp_path / "files.db", tmp_path / "files", max_file_bytes=SIZE)
    await manager.initialize()
    task = asyncio.create_task(manager.add_file("s1", "big.bin", b"y" * SIZE))
    await asyncio.sleep(0)
    assert not task.done(), "add_file ran to completion without ever yielding to the event loop"
    record = await task
    assert record.file_size == SIZE
