"""The in-process benchmarks still run against today's code.

CI does not run the benchmarks for their numbers (`make bench` does, on a quiet machine), but each one drives
the code it measures through its public API; a change to that API broke `bench_sessions.py` without any test
noticing. Each is run here at a tiny size, as a real process, and must finish and print its ratio line. The
cluster benchmark (`bench_flip.py`) is left out: it acts on the local cluster when one is up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "bench_sessions.py": (["--turns", "5", "--repeats", "1"], "issue 15 adds per turn"),
    "bench_transcript.py": (["--long", "2000", "--short", "10", "--turns", "5"], "ratio turn("),
    "bench_window_read.py": (["--reads", "20"], "ratio window("),
}


@pytest.mark.parametrize("script", sorted(TINY))
def test_the_benchmark_runs_at_a_tiny_size(script: str) -> None:
    args, expected = TINY[script]
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "perf" / script), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert expected in done.stdout, done.stdout[-2000:]


def test_every_benchmark_is_run_here_or_named_as_left_out() -> None:
    scripts = {path.name for path in (ROOT / "tests" / "perf").glob("bench_*.py")}
    heavy = {"bench_chat.py", "bench_middleware.py", "bench_signing.py", "bench_flip.py"}
    assert scripts == set(TINY) | heavy, "a new benchmark: add it to TINY (or to the heavy ones, and why)"
