"""Summarise a service's audit log for the rollout gate: decisions counted per caller and route, since a time.

Runs on each machine (`autobot audit summary`), so only counts travel to the controller, never the log. Pure
functions over the JSON lines; lines that are not audit records (a torn last line, garbage) are counted and
skipped, never fatal.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# A row of the summary: who called what, and what the verifier decided.
Key = tuple[str, str, str, str, str, str, str]  # callee, caller, method, path, route_kind, decision, reason


@dataclass
class Summary:
    since: str
    rows: Counter[Key] = field(default_factory=Counter)
    phases: Counter[str] = field(default_factory=Counter)
    first: str | None = None
    last: str | None = None
    unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "first": self.first,
            "last": self.last,
            "unreadable_lines": self.unreadable,
            "phases": dict(self.phases),
            "rows": [
                {
                    "callee": callee,
                    "caller": caller,
                    "method": method,
                    "path": path,
                    "route_kind": kind,
                    "decision": decision,
                    "reason": reason,
                    "count": count,
                }
                for (callee, caller, method, path, kind, decision, reason), count in sorted(self.rows.items())
            ],
        }


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def records(lines: Iterable[str]) -> Iterator[dict[str, Any] | None]:
    """Each line as a record, or None when it is not one."""
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield None
            continue
        yield record if isinstance(record, dict) and isinstance(record.get("time"), str) else None


def summarise(lines: Iterable[str], since: datetime) -> Summary:
    summary = Summary(since=since.isoformat().replace("+00:00", "Z"))
    for record in records(lines):
        if record is None:
            summary.unreadable += 1
            continue
        try:
            when = parse_time(record["time"])
        except ValueError:
            summary.unreadable += 1
            continue
        if when < since:
            continue
        summary.first = summary.first or record["time"]
        summary.last = record["time"]
        summary.phases[str(record.get("phase"))] += 1
        summary.rows[
            (
                str(record.get("callee")),
                str(record.get("caller") or "-"),
                str(record.get("method")),
                str(record.get("path")),
                str(record.get("route_kind") or "service"),
                str(record.get("decision")),
                str(record.get("reason")),
            )
        ] += 1
    return summary


def log_lines(path: Path) -> Iterator[str]:
    """The rotated file first (logrotate's `.1`), then the live one: together, the lines since the rotation
    before the last one, in order."""
    for candidate in (path.with_name(path.name + ".1"), path):
        if candidate.is_file():
            with candidate.open(encoding="utf-8", errors="replace") as handle:
                yield from handle
