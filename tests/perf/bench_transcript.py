"""Benchmark: the durable write of one chat turn at 10 vs 100,000 messages of history.

    python tests/perf/bench_transcript.py [--long 100000] [--short 10] [--turns 100] [--dir DIR]

A turn's durable write is what the chat path does through TranscriptStore: append the user's message, then
append the reply, each synced to disk. Two sessions are filled first (one with `--short` messages, one with
`--long`), then turns alternate between them (short, long, long, short, ...) so that drift on a noisy machine
hits both alike. Reported per turn: wall time (mostly the two fsyncs, so it depends on the disk) and CPU time
of the whole process (all threads: what the turn costs the machine), and the long/short ratios.
Uses only `TranscriptStore(directory)`, `initialize`, `append(session_id, entries)` and `aclose`, so the same
file also measures an older version of the store (run it with that version's src first on PYTHONPATH).
Writes to a temporary directory on the disk of `--dir` (default: the system temp directory); prints
numbers, asserts nothing. Bounded: a fixed number of turns.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from autobot.chat.entries import ChatEntry  # noqa: E402
from autobot.chat.transcripts import TranscriptStore  # noqa: E402

TEXT = "a chat message of a typical length, about one sentence or two, with some words in it. " * 2


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def entries(n: int) -> list[ChatEntry]:
    return [ChatEntry.new("user" if i % 2 == 0 else "assistant", f"{i}: {TEXT}") for i in range(n)]


async def turn(store: TranscriptStore, session: str, index: int) -> tuple[float, float]:
    """One turn's durable writes: (wall seconds, CPU seconds of the process)."""
    question, answer = (
        ChatEntry.new("user", f"q{index}: {TEXT}"),
        ChatEntry.new("assistant", f"a{index}: {TEXT}"),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    await store.append(session, [question])
    await store.append(session, [answer])
    return time.perf_counter() - wall, time.process_time() - cpu


async def run(directory: Path, long: int, short: int, turns: int) -> None:
    store = TranscriptStore(directory)
    await store.initialize()
    try:
        filled = time.perf_counter()
        await store.append("long", entries(long))
        await store.append("short", entries(short))
        filled = time.perf_counter() - filled
        sizes = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
        for i in range(5):  # warm-up: threads started, files cached
            await turn(store, "short", -1 - i)
            await turn(store, "long", -1 - i)
        results: dict[str, dict[str, list[float]]] = {s: {"wall": [], "cpu": []} for s in ("short", "long")}
        for i in range(turns):
            for session in ("short", "long") if i % 2 == 0 else ("long", "short"):
                wall, cpu = await turn(store, session, i)
                results[session]["wall"].append(wall)
                results[session]["cpu"].append(cpu)
    finally:
        await store.aclose()

    print(
        f"bench_transcript: {turns} turns per session (user message + reply, each appended and synced), "
        f"alternating; histories of {short} and {long} messages ({filled:.1f} s to fill); store "
        f"{TranscriptStore.__module__} from {sys.modules[TranscriptStore.__module__].__file__}"
    )
    print(f"  files before the turns: {sizes}")
    print(f"{'history':<10} {'wall mean ms':>12} {'wall p50 ms':>12} {'cpu mean ms':>12} {'cpu p50 ms':>11}")
    for session, n in (("short", short), ("long", long)):
        wall = [x * 1000 for x in results[session]["wall"]]
        cpu = [x * 1000 for x in results[session]["cpu"]]
        print(
            f"{n:<10} {sum(wall) / len(wall):>12.2f} {percentile(wall, 0.5):>12.2f} "
            f"{sum(cpu) / len(cpu):>12.3f} {percentile(cpu, 0.5):>11.3f}"
        )
    ratio = {key: sum(results["long"][key]) / sum(results["short"][key]) for key in ("wall", "cpu")}
    p50 = {
        key: percentile(results["long"][key], 0.5) / percentile(results["short"][key], 0.5)
        for key in ("wall", "cpu")
    }
    print(
        f"ratio turn({long} messages) / turn({short} messages): cpu mean {ratio['cpu']:.2f}, "
        f"cpu p50 {p50['cpu']:.2f}, wall mean {ratio['wall']:.2f}, wall p50 {p50['wall']:.2f} (aim < 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long", type=int, default=100_000)
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary directory goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-transcript-", dir=args.dir) as tmp:
        asyncio.run(run(Path(tmp), args.long, args.short, args.turns))


if __name__ == "__main__":
    main()
