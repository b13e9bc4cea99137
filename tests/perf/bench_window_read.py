"""Benchmark: reading a model's window from a 10,000-message history vs a 20-message one.

    python tests/perf/bench_window_read.py [--reads 2000] [--model NAME]

Starts a real redis-server on a free loopback port, fills two sessions through RedisChatHistory (capped at
20,000 so nothing is trimmed), then times `window(session, fetch_limit + 1)`, the read the chat path does,
alternating between the sessions so drift on a noisy machine hits both alike. For contrast it also times
reading the whole history (what a GET of one JSON blob, AutoBot's old layout, has to do). Prints numbers;
asserts nothing. Bounded: a fixed number of reads.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import start_redis  # noqa: E402

from autobot.chat.entries import ChatEntry  # noqa: E402
from autobot.chat.history import RedisChatHistory  # noqa: E402
from autobot.config import RedisConfig  # noqa: E402
from autobot.context import ContextWindowManager, ModelRegistry  # noqa: E402
from autobot.redis_pool import create_redis  # noqa: E402

LONG, SHORT = 10_000, 20


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def entries(n: int) -> list[ChatEntry]:
    text = "a chat message of a typical length, about one sentence or two, with some words in it. " * 2
    return [ChatEntry.new("user" if i % 2 == 0 else "assistant", f"{i}: {text}") for i in range(n)]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def run(url: str, reads: int, model: str | None) -> None:
    windows = ContextWindowManager(ModelRegistry.load())
    spec = windows.spec(model)
    count = windows.fetch_limit(spec) + 1
    client = create_redis(RedisConfig(url=url))
    history = RedisChatHistory(client, max_messages=2 * LONG, ttl_s=3600)
    try:
        for session, n in (("long", LONG), ("short", SHORT)):
            batch = entries(n)
            for start in range(0, n, 1000):
                chunk = batch[start : start + 1000]
                await history.append(session, chunk, last_seq=start + len(chunk))
        sizes = {s: await client.llen(f"chat:history:{s}") for s in ("long", "short")}
        results: dict[str, list[float]] = {"long": [], "short": [], "long, whole history": []}
        for _ in range(20):  # warm-up
            await history.window("long", count)
            await history.window("short", count)
        for i in range(reads):
            order = ("long", "short") if i % 2 == 0 else ("short", "long")
            for session in order:
                results[session].append(await timed(functools.partial(history.window, session, count)))
        for _ in range(max(1, reads // 20)):
            results["long, whole history"].append(
                await timed(functools.partial(history.window, "long", 2 * LONG))
            )
    finally:
        await client.aclose(close_connection_pool=True)

    print(
        f"bench_window_read: model {spec.name}, window read = LRANGE -{count} -1 (fetch_limit {count - 1} "
        f"+ the new message); {reads} reads per session, alternating; history lengths {sizes}"
    )
    print(f"{'read':<22} {'n':>5} {'mean us':>9} {'p50 us':>9} {'p99 us':>9}")
    for name, samples in results.items():
        us = [x * 1e6 for x in samples]
        mean, p50, p99 = sum(us) / len(us), percentile(us, 0.5), percentile(us, 0.99)
        print(f"{name:<22} {len(us):>5} {mean:>9.0f} {p50:>9.0f} {p99:>9.0f}")
    long_p50, short_p50 = percentile(results["long"], 0.5), percentile(results["short"], 0.5)
    long_mean = sum(results["long"]) / len(results["long"])
    short_mean = sum(results["short"]) / len(results["short"])
    print(
        f"ratio window(10,000-message history) / window(20-message history): p50 {long_p50 / short_p50:.2f}, "
        f"mean {long_mean / short_mean:.2f} (aim < 2)"
    )
    whole = percentile(results["long, whole history"], 0.5)
    print(f"reading the whole 10,000-message history instead costs {whole / long_p50:.0f}x the window (p50)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--model", default=None, help="registry model name (default: the registry default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            asyncio.run(run(server.url, args.reads, args.model))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
