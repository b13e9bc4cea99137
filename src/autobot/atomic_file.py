"""The one way this package replaces a file: readers and crashes see the old bytes or the new, never half.

Used by chat transcripts, uploaded file content (storage) and the controller's keyring file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int) -> os.stat_result:
    """Replace `path` with `data`, with permission bits `mode` (the umask does not apply).

    The bytes go to a temp file in the same directory (created 0600, so nobody else can open it before its
    mode is set), are fsynced, and the temp file is renamed over `path`; then the directory is fsynced so the
    new name survives a power loss. Returns the stat of the file written (the rename keeps its inode, size and
    mtime). A failed write leaves no temp file behind.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            written = os.fstat(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
    return written


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename is durable only then), where the platform allows it.

    A failure is tolerated: the file's data is already synced, and some platforms and file systems cannot
    open or fsync a directory at all; failing the write there would refuse every write for a lesser risk.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
