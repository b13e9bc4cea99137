"""Benchmark: what the session registry adds to one chat turn (issue 15), against what a turn already costs.

    python tests/perf/bench_sessions.py [--turns 2000] [--repeats 5]

A chat turn appends to the Redis history twice (the user's message, then the reply: one MULTI each, see
autobot.chat.history). Issue 15 adds the ownership check before the turn (`SessionRegistry.owner_of`: one
pipelined HGET + EXISTS) and the session-list update after it (`touch`: one MULTI). This measures the three on
a real redis-server over loopback, interleaved round by round so that noise lands on all of them, and prints
each one's time per call and its ratio to the history append. Prints numbers only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import running_redis  # noqa: E402

from autobot.chat.entries import ChatEntry  # noqa: E402
from autobot.chat.history import RedisChatHistory  # noqa: E402
from autobot.config import RedisConfig  # noqa: E402
from autobot.redis_pool import create_redis  # noqa: E402
from autobot.sessions import SessionRegistry, ids  # noqa: E402


async def _time_per_call(call: Callable[[], Awaitable[object]], turns: int) -> float:
    start = time.perf_counter()
    for _ in range(turns):
        await call()
    return (time.perf_counter() - start) / turns


async def run(url: str, workdir: Path, turns: int, repeats: int) -> dict[str, list[float]]:
    redis = create_redis(RedisConfig(url=url))
    try:
        registry = SessionRegistry(redis, workdir / "transcripts")
        await registry.initialize()
        owner = ids.client_owner(ids.new_client_token())
        session = await registry.create(owner)
        history = RedisChatHistory(redis, max_messages=64, ttl_s=3600)
        entry = ChatEntry.new("user", "how is the cluster doing today?")
        seq = itertools.count(1)  # each append ends the transcript one entry further, as a turn does
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "history append (baseline)": lambda: history.append(
                session.session_id, [entry], last_seq=next(seq), window=20
            ),
            "ownership check": lambda: registry.owner_of(session.session_id),
            "session-list update": lambda: registry.touch(owner, session.session_id, message="hi", added=2),
        }
        results: dict[str, list[float]] = {name: [] for name in calls}
        for round_no in range(repeats):
            order = list(calls) if round_no % 2 == 0 else list(reversed(calls))
            for name in order:
                results[name].append(await _time_per_call(calls[name], turns))
        return results
    finally:
        await redis.aclose(close_connection_pool=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="rounds, the order alternating")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-sessions-") as tmp,
        running_redis(Path(tmp) / "redis") as server,
    ):
        results = asyncio.run(run(server.url, Path(tmp), args.turns, args.repeats))
    base = statistics.median(results["history append (baseline)"])
    print(
        f"bench_sessions: {args.turns} calls x {args.repeats} rounds, redis-server on loopback, "
        "median time per call"
    )
    for name, samples in results.items():
        per_call = statistics.median(samples)
        print(f"  {name:<27} {per_call * 1e6:8.1f} us   {per_call / base:5.2f}x the history append")
    added = statistics.median(results["ownership check"]) + statistics.median(results["session-list update"])
    print(
        f"  issue 15 adds per turn      {added * 1e6:8.1f} us   "
        f"{added / (2 * base):5.2f}x the turn's two appends"
    )


if __name__ == "__main__":
    main()
