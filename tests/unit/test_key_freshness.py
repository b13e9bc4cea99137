"""autobot_key_freshness: whether a process started after its key files last changed, from /proc, on real
processes of this machine (each test starts its own and ends it by PID)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

MODULE = Path(__file__).resolve().parents[2] / "ansible" / "plugins" / "modules" / "autobot_key_freshness.py"


@pytest.fixture(scope="module")
def freshness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autobot_key_freshness", MODULE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def _key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "service-keys"
    d.mkdir()
    for name in ("master.v1.key", "pair.a.v1.key", "redis.password", "versions.json"):
        (d / name).write_text("x\n")
    return d


def test_the_start_time_is_read_after_the_last_parenthesis(freshness: ModuleType) -> None:
    # A command name may hold spaces and parentheses; starttime is field 22 (ticks since boot).
    fields = " ".join(["S", *[str(n) for n in range(4, 22)], "12345", "0"])
    stat = f"4242 (weird ) name) {fields}"
    assert freshness.process_start_time(stat, 1000.0, 100) == 1000.0 + 123.45
    assert freshness.boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n") == 1700000000.0
    with pytest.raises(ValueError, match="btime"):
        freshness.boot_time("cpu 1 2\n")


def test_a_process_started_after_its_files_is_fresh(
    freshness: ModuleType, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    key_dir = tmp_path / "service-keys"
    key_dir.mkdir()
    for name in ("master.v1.key", "redis.password"):
        (key_dir / name).write_text("x\n")
        os.utime(key_dir / name, (time.time() - 60, time.time() - 60))
    os.utime(key_dir, (time.time() - 60, time.time() - 60))
    result = freshness.freshness(sleeper.pid, str(key_dir), ["*.key", "redis.password"])
    assert result["running"] is True
    assert result["stale"] is False
    assert abs(result["started"] - time.time()) < 30


def test_a_file_changed_after_the_process_started_makes_it_stale(
    freshness: ModuleType, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    key_dir = _key_dir(tmp_path)
    for path in key_dir.iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    time.sleep(0.05)
    (key_dir / "redis.password").write_text("new\n")
    result = freshness.freshness(sleeper.pid, str(key_dir), ["*.key", "redis.password"])
    assert result["stale"] is True
    assert result["newest_file"] == "redis.password"


def test_files_outside_the_patterns_do_not_count(
    freshness: ModuleType, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    key_dir = _key_dir(tmp_path)
    for path in [*key_dir.iterdir(), key_dir]:
        os.utime(path, (time.time() - 60, time.time() - 60))
    (key_dir / "versions.json").write_text("{}\n")  # status only: the service never reads it
    assert freshness.freshness(sleeper.pid, str(key_dir), ["*.key", "redis.password"])["stale"] is False


def test_a_unit_without_a_process_is_stale(freshness: ModuleType, tmp_path: Path) -> None:
    result = freshness.freshness(0, str(_key_dir(tmp_path)), ["*.key"])
    assert (result["running"], result["stale"]) == (False, True)


def test_a_file_removed_after_the_process_started_makes_it_stale(
    freshness: ModuleType, tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """Retiring a version removes its pair key file: no remaining file changes, but the process still accepts
    the retired version until it restarts."""
    key_dir = _key_dir(tmp_path)
    for path in [*key_dir.iterdir(), key_dir]:
        os.utime(path, (time.time() - 60, time.time() - 60))
    assert freshness.freshness(sleeper.pid, str(key_dir), ["*.key", "redis.password"])["stale"] is False
    (key_dir / "pair.a.v1.key").unlink()
    result = freshness.freshness(sleeper.pid, str(key_dir), ["*.key", "redis.password"])
    assert result["stale"] is True
    assert result["newest_file"] == freshness.DIRECTORY_CHANGED
