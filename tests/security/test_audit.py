"""The audit log: one JSON line per decision, nothing secret, written off the loop without interleaving."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.security.auth_support import AUDIT_FIELDS

from autobot.security.audit import AuditLog, AuditLogError, audit_line, audit_record
from autobot.security.decision import Decision


def _record(n: int = 0) -> dict[str, object]:
    return audit_record(
        decision=Decision(403, "not_granted", "service", "ai-stack", "ai-stack:v1"),
        callee="npu-worker",
        method="DELETE",
        raw_path=f"/api/process/{n}".encode() + b"/\xff",
        phase="enforcement",
        when=datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )


def test_record_fields() -> None:
    record = _record()
    assert set(record) == AUDIT_FIELDS
    assert record["time"] == "2025-01-02T03:04:05.678Z"
    assert record["decision"] == "deny"
    assert record["path"] == "/api/process/0/\\xff"  # non-ASCII bytes are escaped, never dropped


def test_many_writers_lines_never_interleave(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.log")
    try:

        def writer(t: int) -> None:
            for i in range(500):
                log.write(_record(t * 1000 + i))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.flush()
    finally:
        log.close()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 4000
    paths = {json.loads(line)["path"] for line in lines}
    assert len(paths) == 4000
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o640


def test_close_flushes_and_later_writes_are_not_silently_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog.open(tmp_path / "audit.log")
    log.write(_record(1))
    log.close()
    assert len((tmp_path / "audit.log").read_text().splitlines()) == 1
    log.write(_record(2))
    assert "record lost" in caplog.text


def test_unopenable_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="cannot open audit log"):
        AuditLog.open(tmp_path / "missing-dir" / "audit.log")


def test_lines_are_batched_but_flush_and_close_do_not_wait_for_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    log = AuditLog(path, fd, batch_interval_s=30.0)  # a line alone would wait up to 30 s
    try:
        for n in range(3):
            log.write(_record(n))
        started = time.monotonic()
        assert log.flush(timeout=10.0)
        assert time.monotonic() - started < 5.0
        assert len(path.read_text().splitlines()) == 3
        log.write(_record(3))
        started = time.monotonic()
    finally:
        log.close(timeout=10.0)
    assert time.monotonic() - started < 5.0
    assert len(path.read_text().splitlines()) == 4


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 401, 403, 413, 431, 503]),
    reason=st.text(max_size=40),
    route_kind=st.sampled_from(["public", "service"]),
    caller=st.one_of(st.none(), st.text(max_size=20)),
    keyid=st.one_of(st.none(), st.text(max_size=20)),
    method=st.text(max_size=40),
    raw_path=st.binary(max_size=3000),
    phase=st.sampled_from(["logging", "enforcement"]),
    micros=st.integers(min_value=0, max_value=4_000_000_000 * 10**6),
)
def test_the_line_is_the_json_encoding_of_the_record(
    status: int,
    reason: str,
    route_kind: Any,
    caller: str | None,
    keyid: str | None,
    method: str,
    raw_path: bytes,
    phase: Any,
    micros: int,
) -> None:
    """`audit_line` formats a template instead of encoding a dict: the bytes must be what encoding the
    record's fields with the json module gives, for any text (quotes, backslashes, non-ASCII)."""
    decision = Decision(status, reason, route_kind, caller, keyid)
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    expected = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "callee": "npu-worker",
        "caller": caller,
        "keyid": keyid,
        "method": method[:32],
        "path": raw_path[:2048].decode("ascii", errors="backslashreplace"),
        "decision": decision.label,
        "status": status,
        "reason": reason,
        "phase": phase,
        "route_kind": route_kind,
    }
    line = audit_line(
        decision=decision, callee="npu-worker", method=method, raw_path=raw_path, phase=phase, when=when
    )
    assert line == json.dumps(expected, separators=(",", ":"), ensure_ascii=True) + "\n"


def test_the_log_follows_a_rotation_without_losing_a_line(tmp_path: Path) -> None:
    """logrotate renames the file and creates a new one (no signal is sent): the writer notices and writes
    the next lines to the new file; every line is in one of the two."""
    from autobot.security.audit import AuditLog

    path = tmp_path / "service-auth-audit.log"
    audit = AuditLog.open(path)
    try:
        audit.write_line('{"n":1}\n')
        assert audit.flush()
        path.rename(tmp_path / "service-auth-audit.log.1")
        path.touch(mode=0o640)
        for n in (2, 3):
            audit.write_line(f'{{"n":{n}}}\n')
        assert audit.flush()
    finally:
        audit.close()
    assert (tmp_path / "service-auth-audit.log.1").read_text() == '{"n":1}\n'
    assert path.read_text() == '{"n":2}\n{"n":3}\n'


def test_the_log_is_recreated_when_it_was_removed(tmp_path: Path) -> None:
    from autobot.security.audit import AuditLog

    path = tmp_path / "audit.log"
    audit = AuditLog.open(path)
    try:
        path.unlink()
        audit.write_line('{"n":1}\n')
        assert audit.flush()
    finally:
        audit.close()
    assert path.read_text() == '{"n":1}\n'
    assert path.stat().st_mode & 0o777 == 0o640 & ~0o022
