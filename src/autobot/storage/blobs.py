"""File content on disk: written atomically and durably, so a reader never sees half a file."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

FILE_MODE = 0o600  # only the service user reads uploads
DIR_MODE = 0o750


def ensure_dir(directory: Path) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def write_atomic(target: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename into place.

    The rename is atomic, so ``target`` either does not exist or holds all of ``data``; the directory is
    fsynced afterwards so the new name survives a power loss.
    """
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def remove_quietly(target: Path) -> None:
    # Used while undoing a failed upload: the original error is the one worth reporting.
    with contextlib.suppress(OSError):
        target.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the data itself is already synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
