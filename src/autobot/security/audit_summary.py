"""Summarise a service's audit log for the rollout gate: decisions counted per caller and route, since a time.

Runs on each machine (`autobot audit summary`), so only counts travel to the controller, never the log. Pure
functions over the JSON lines; lines that are not audit records (a torn last line, garbage) are counted and
skipped, never fatal.

With the matrix, a path is counted under the route pattern it falls under (`DELETE /api/sessions/*`), so a
day of traffic is a few rows, not one per session id. Paths under no route (a scanner, a caller's typo) are
kept as they are, the most frequent MAX_UNROUTED_PATHS of them; the rest are counted under OTHER_PATHS.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from autobot.security.matrix import Matrix

# A row of the summary: who called what, and what the verifier decided.
Key = tuple[str, str, str, str, str, str, str]  # callee, caller, method, path, route_kind, decision, reason
MAX_UNROUTED_PATHS = 50
OTHER_PATHS = "(other paths under no route)"


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


def summarise(lines: Iterable[str], since: datetime, matrices: Mapping[str, Matrix] | None = None) -> Summary:
    """`matrices`: callee -> its matrix; paths are then counted under their route patterns."""
    summary = Summary(since=since.isoformat().replace("+00:00", "Z"))
    unrouted: Counter[str] = Counter()
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
        callee, method, path = str(record.get("callee")), str(record.get("method")), str(record.get("path"))
        matrix = (matrices or {}).get(callee)
        route = matrix.route_of(method, path) if matrix is not None else None
        if matrix is not None and route is None:
            unrouted[path] += 1
        summary.rows[
            (
                callee,
                str(record.get("caller") or "-"),
                method,
                route or path,
                str(record.get("route_kind") or "service"),
                str(record.get("decision")),
                str(record.get("reason")),
            )
        ] += 1
    if len(unrouted) > MAX_UNROUTED_PATHS:
        _fold_paths(summary.rows, {path for path, _ in unrouted.most_common()[MAX_UNROUTED_PATHS:]})
    return summary


def _fold_paths(rows: Counter[Key], paths: set[str]) -> None:
    """Count the rows of `paths` under OTHER_PATHS (a scanner's thousand paths become one row)."""
    for key in [key for key in rows if key[3] in paths]:
        callee, caller, method, _, kind, decision, reason = key
        rows[(callee, caller, method, OTHER_PATHS, kind, decision, reason)] += rows.pop(key)


def log_lines(path: Path) -> Iterator[str]:
    """The rotated file first (logrotate's `.1`), then the live one: together, the lines since the rotation
    before the last one, in order."""
    for candidate in (path.with_name(path.name + ".1"), path):
        if candidate.is_file():
            with candidate.open(encoding="utf-8", errors="replace") as handle:
                yield from handle
