"""Where uploaded content lives on disk: its modes, its directory, and undoing a write.

The content itself is written with `autobot.atomic_file.write_atomic(path, data, FILE_MODE)`, so a reader
never sees half a file."""

from __future__ import annotations

import contextlib
from pathlib import Path

FILE_MODE = 0o600  # only the service user reads uploads
DIR_MODE = 0o750


def ensure_dir(directory: Path) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def remove_quietly(target: Path) -> None:
    # Used while undoing a failed upload: the original error is the one worth reporting.
    with contextlib.suppress(OSError):
        target.unlink(missing_ok=True)
