"""The one atomic writer (autobot.atomic_file) on a real file system: crashes, modes, directory fsync."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autobot.atomic_file import write_atomic
from autobot.security.keyring_file import plan_keyring, read_keyring, write_keyring_atomic

_CHILD_PRELUDE = """
import json, os, signal, sys
from pathlib import Path
from autobot.atomic_file import write_atomic
target = Path(sys.argv[1])
"""


def _run_child(body: str, target: Path) -> subprocess.Popen[bytes]:
    code = _CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, str(target)], stderr=subprocess.PIPE)


def _doc(tag: str, size: int) -> bytes:
    return json.dumps({"tag": tag, "padding": tag * size}).encode()


def test_killed_between_write_and_replace_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    old = _doc("old", 10)
    target.write_bytes(old)
    # The child writes and fsyncs the new version, then dies (SIGKILL: no cleanup) just before the rename.
    child = _run_child(
        """
        def die(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = die
        write_atomic(target, json.dumps({"tag": "new"}).encode(), 0o600)
        """,
        target,
    )
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()
    assert target.read_bytes() == old
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the new bytes were written, only the rename was lost
    assert json.loads(leftovers[0].read_bytes()) == {"tag": "new"}


def test_killed_at_random_moments_the_file_is_always_old_or_new_never_truncated(tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    versions = {_doc(tag, 200_000) for tag in ("a", "b")}
    target.write_bytes(_doc("a", 200_000))
    rng = random.Random(1234)
    for _ in range(6):
        child = _run_child(
            """
            docs = [json.dumps({"tag": t, "padding": t * 200_000}).encode() for t in ("a", "b")]
            print("ready", file=sys.stderr, flush=True)
            i = 0
            while True:
                write_atomic(target, docs[i % 2], 0o600)
                i += 1
            """,
            target,
        )
        assert child.stderr is not None
        assert child.stderr.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.01, 0.15))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()
        assert target.read_bytes() in versions
        parsed = json.loads(target.read_bytes())
        assert parsed["tag"] in ("a", "b")


def test_write_atomic_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_atomic(target, b"1", 0o600)
    write_atomic(target, b"22", 0o600)
    assert target.read_bytes() == b"22"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        written = write_atomic(tmp_path / "shared", b"x", 0o640)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o640
    write_atomic(tmp_path / "shared", b"y", 0o600)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o600
    assert written.st_ino != (tmp_path / "shared").stat().st_ino  # replaced, not rewritten in place


def test_the_returned_stat_is_the_file_now_in_place(tmp_path: Path) -> None:
    target = tmp_path / "x"
    written = write_atomic(target, b"12345", 0o600)
    now = target.stat()
    assert (written.st_ino, written.st_size, written.st_mtime_ns) == (now.st_ino, 5, now.st_mtime_ns)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def _directories_cannot_be_fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make fsync fail on directories only, as on file systems that refuse it; returns what was refused."""
    real_fsync = os.fsync
    refused: list[str] = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            refused.append("directory")
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return refused


def test_a_failed_directory_fsync_is_tolerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _directories_cannot_be_fsynced(monkeypatch)
    write_atomic(tmp_path / "x", b"data", 0o600)
    assert refused == ["directory"]
    assert (tmp_path / "x").read_bytes() == b"data"


def test_the_keyring_file_is_written_by_it_0600_even_where_directories_cannot_be_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = _directories_cannot_be_fsynced(monkeypatch)
    keyring, _ = plan_keyring(None, ["main-backend"])
    path = tmp_path / "keyring.yml"
    write_keyring_atomic(path, keyring)
    assert refused == ["directory"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keyring(path) == keyring
