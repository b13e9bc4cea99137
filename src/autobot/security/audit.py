"""The service-auth audit log: one JSON line per decision, written by a background thread.

Records hold who/what/decision only, never the signature, a key or the body (`audit_line` takes none of
them).
A single writer thread per process appends each batch with one `write()` on an O_APPEND descriptor, so request
handling never waits for the disk and lines never interleave (also not between worker processes). The writer
wakes at most once per BATCH_INTERVAL_S under load: waking it for every line cost each request a thread
wake-up and a GIL hand-over, tens of microseconds of server CPU (tests/perf/bench_middleware.py).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Literal

from autobot.security.decision import Decision

Phase = Literal["logging", "enforcement"]
_MAX_PATH_CHARS = 2048
# json.dumps with options builds a new encoder per call; one shared encoder saves about a quarter of that.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
# How long the writer lets lines gather after the first one arrives; also the most a line waits.
BATCH_INTERVAL_S = 0.02
log = logging.getLogger(__name__)


class AuditLogError(Exception):
    """The audit log cannot be opened."""


# The audit line, field by field in a fixed order; every string goes through the json module's own
# C-level escaper. Formatting one template costs a quarter of building a dict and encoding it (a few us a
# request); the lines are the same bytes as `json.dumps(audit_record(...), separators=(",", ":"))`.
_LINE = (
    '{"time":%s,"callee":%s,"caller":%s,"keyid":%s,"method":%s,"path":%s,"decision":%s,"status":%d,'
    '"reason":%s,"phase":%s,"route_kind":%s}\n'
)


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def audit_line(
    *, decision: Decision, callee: str, method: str, raw_path: bytes, phase: Phase, when: datetime
) -> str:
    """The audit line for one decision: one JSON object and a newline. Pure; the query string is left out
    (it may carry user data), and so is everything secret (it takes no signature, key or body)."""
    path = raw_path[:_MAX_PATH_CHARS].decode("ascii", errors="backslashreplace")
    time_text = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _LINE % (
        encode_basestring_ascii(time_text),
        encode_basestring_ascii(callee),
        _json_or_null(decision.caller),
        _json_or_null(decision.keyid),
        encode_basestring_ascii(method[:32]),
        encode_basestring_ascii(path),
        encode_basestring_ascii(decision.label),
        decision.status,
        encode_basestring_ascii(decision.reason),
        encode_basestring_ascii(phase),
        encode_basestring_ascii(decision.route_kind),
    )


def audit_record(
    *, decision: Decision, callee: str, method: str, raw_path: bytes, phase: Phase, when: datetime
) -> dict[str, Any]:
    """The audit line for one decision as a mapping (what a reader of the log gets back)."""
    record: dict[str, Any] = json.loads(
        audit_line(decision=decision, callee=callee, method=method, raw_path=raw_path, phase=phase, when=when)
    )
    return record


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class AuditLog:
    """Append-only JSON-lines file fed through a queue; `write` never blocks on I/O."""

    def __init__(self, path: Path, fd: int, *, batch_interval_s: float = BATCH_INTERVAL_S) -> None:
        self.path = path
        self._fd = fd
        self._batch_interval_s = batch_interval_s
        self._wake = threading.Event()  # set by flush/close so they need not wait for the batch interval
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="autobot-audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: Path | str) -> AuditLog:
        """Open (creating with mode 0640) the log file; blocking, so call it at start-up or in a thread."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise AuditLogError(f"cannot open audit log {path}: {exc.strerror or exc}") from exc
        return cls(path, fd)

    def write(self, record: Mapping[str, Any]) -> None:
        self.write_line(_ENCODER.encode(record) + "\n")

    def write_line(self, line: str) -> None:
        """Queue one complete line (ASCII, ending in a newline), as `audit_line` makes it."""
        if self._closed:
            log.error("audit log %s is closed; record lost: %s", self.path, line.rstrip())
            return
        self._queue.put(line)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every record queued so far is written (tests, shutdown)."""
        if self._closed:
            return True
        marker = _Flush()
        self._queue.put(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            # A line queued by a request racing with close() (after the writer's last drain) still counts.
            leftovers = self._drain_lines()
            if leftovers:
                self._append("".join(leftovers).encode("ascii"))
            os.close(self._fd)

    def _drain_lines(self) -> list[str]:
        lines: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return lines
            if isinstance(item, str):
                lines.append(item)
            elif isinstance(item, _Flush):
                item.done.set()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, str):
                # Let the lines of concurrent requests gather: one wake-up and one write() for all of them.
                self._wake.wait(self._batch_interval_s)
            self._wake.clear()
            lines: list[str] = []
            markers: list[_Flush] = []
            stop = False
            while True:  # drain what is already queued, then write it as one batch
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                elif isinstance(item, str):
                    lines.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self._append("".join(lines).encode("ascii"))
            for marker in markers:
                marker.done.set()
            if stop:
                return

    def _reopen_if_rotated(self) -> None:
        """logrotate renamed the file (roles/python_service: `create`, no signal sent): once the path names
        another file, or none, write to a new one there. One stat per batch, in this thread, never on the
        request path."""
        try:
            current, held = os.stat(self.path), os.fstat(self._fd)
        except FileNotFoundError:
            pass
        except OSError:
            return  # keep writing where we were; the next batch looks again
        else:
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            log.error("cannot reopen the rotated audit log %s: %s", self.path, exc.strerror or exc)
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def _append(self, data: bytes) -> None:
        self._reopen_if_rotated()
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            # Still recorded somewhere: the service log (journald) gets the lines the file could not take.
            log.error(
                "cannot write audit log %s (%s); lines: %s", self.path, exc.strerror, bytes(view).decode()
            )
