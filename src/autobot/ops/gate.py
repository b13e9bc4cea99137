"""The rollout gate: may the cluster move from the logging phase to enforcement?

Input: every Python service machine's recorded phase (and since when) and the summary of its audit log since
then (`autobot audit summary`). Only service routes count; public (user) traffic is counted apart, so browser
traffic can never drown the signal. Enforcement is refused while:
- a machine is not in the logging phase (none: nothing was observed; enforcement is fine to keep);
- the logging phase has run less than the minimum time on some machine;
- any service-route request would have been refused (a would-deny line), listed as caller/route pairs with
  their reasons;
- the replay store (Redis) missed the logging phase's budget for more than STORE_UNAVAILABLE_TOLERANCE of a
  pair's requests.
A replay-store miss is an availability event, not a policy verdict: the request was otherwise authentic and
granted, the logging phase waits 50 ms for Redis and enforcement 500 ms, so an occasional miss under load says
nothing about enforcement refusing that caller. Those rows show as "unavailable", apart from would-deny ones;
only a share that points at a Redis problem holds enforcement back (it fails closed: 503 while Redis is away).
An operator may go on anyway with an explicit reason, recorded in the report. Pure: the playbook gathers, this
decides, and the module around it writes the report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autobot.security.audit_summary import parse_time
from autobot.security.decision import REPLAY_STORE_UNAVAILABLE

# The share of a caller/route pair's signed requests that may miss the replay store's budget in the window.
STORE_UNAVAILABLE_TOLERANCE = 0.01
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Row:
    caller: str
    callee: str
    route: str
    decision: str
    count: int
    reasons: tuple[str, ...]


@dataclass
class GateReport:
    passed: bool
    checked_at: str
    min_duration_s: int
    refusals: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    would_deny: list[Row] = field(default_factory=list)
    public_requests: dict[str, int] = field(default_factory=dict)
    unseen_grants: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    override: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def row(r: Row) -> dict[str, Any]:
            return {
                "caller": r.caller,
                "callee": r.callee,
                "route": r.route,
                "decision": r.decision,
                "count": r.count,
                "reasons": list(r.reasons),
            }

        return {
            "passed": self.passed,
            "checked_at": self.checked_at,
            "min_duration_s": self.min_duration_s,
            "refusals": self.refusals,
            "override": self.override,
            "rows": [row(r) for r in self.rows],
            "would_deny": [row(r) for r in self.would_deny],
            "public_requests": self.public_requests,
            "unseen_grants": self.unseen_grants,
            "notes": self.notes,
            "machines": self.machines,
        }

    def table(self) -> str:
        """Plain text for the operator's terminal: one line per caller, callee, route and decision."""
        header = ("caller", "callee", "route", "decision", "count", "reasons")
        lines = [header] + [
            (r.caller, r.callee, r.route, r.decision, str(r.count), ", ".join(r.reasons) or "-")
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines]
        public = ", ".join(f"{callee} {n}" for callee, n in sorted(self.public_requests.items())) or "none"
        text.append(f"public (user) requests, counted apart: {public}")
        if self.unseen_grants:
            text.append("granted but never called in the window: " + "; ".join(self.unseen_grants))
        text.extend(f"note: {note}" for note in self.notes)
        verdict = "PASSED" if self.passed else "REFUSED"
        if self.override and not self.refusals:
            verdict = "PASSED"
        text.append(f"gate {verdict}" + (f" (override: {self.override})" if self.override else ""))
        text.extend(f"  - {refusal}" for refusal in self.refusals)
        return "\n".join(text)


def _granted_routes(services: Mapping[str, Any]) -> list[str]:
    return sorted(
        f"{caller} -> {callee} {'|'.join(grant['methods'])} {grant['path']}"
        for callee, spec in services.items()
        for caller, grants in (spec.get("callers") or {}).items()
        for grant in grants
    )


def _judge_store_misses(report: GateReport) -> None:
    """Each pair's replay-store misses against all its requests in the window: a note under the tolerance,
    a refusal over it."""
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in report.rows:
        totals[(r.caller, r.callee, r.route)] += r.count
    for r in report.rows:
        if r.decision != UNAVAILABLE:
            continue
        total = totals[(r.caller, r.callee, r.route)]
        share = r.count / total
        said = (
            f"{r.caller} -> {r.callee} {r.route}: {r.count} of {total} request(s) ({share:.2%}) found the "
            "replay store (Redis) slower than the logging phase's budget"
        )
        if share > STORE_UNAVAILABLE_TOLERANCE:
            report.refusals.append(
                f"{said}, over the {STORE_UNAVAILABLE_TOLERANCE:.0%} tolerated; enforcement answers 503 "
                "while Redis is away: look at Redis (latency, restarts, the network) first"
            )
        else:
            report.notes.append(f"{said}; tolerated (at most {STORE_UNAVAILABLE_TOLERANCE:.0%})")


def decide(
    machines: Mapping[str, Mapping[str, Any]],
    services: Mapping[str, Any],
    *,
    now: datetime,
    min_duration_s: int,
    override: str | None = None,
) -> GateReport:
    """`machines`: host -> {"service", "phase", "since", "summary"} (as `autobot audit summary` prints it)."""
    report = GateReport(
        passed=False,
        checked_at=now.isoformat().replace("+00:00", "Z"),
        min_duration_s=min_duration_s,
        override=override or None,
    )
    grouped: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "reasons": set()}
    )
    public: dict[str, int] = defaultdict(int)
    for host, info in sorted(machines.items()):
        phase, since = info.get("phase"), info.get("since")
        ran_s = int((now - parse_time(since)).total_seconds()) if isinstance(since, str) else 0
        report.machines[host] = {
            "service": info.get("service"),
            "phase": phase,
            "since": since,
            "ran_s": ran_s,
        }
        if phase not in ("logging", "enforcement"):  # none, missing, or a record no deploy wrote
            report.refusals.append(f"{host}: not in the logging phase (phase {phase}): nothing was observed")
        elif phase == "logging" and ran_s < min_duration_s:
            report.refusals.append(
                f"{host}: the logging phase ran {ran_s} s of the {min_duration_s} s required (since {since})"
            )
        for row in (info.get("summary") or {}).get("rows", []):
            if row["route_kind"] == "public":
                public[row["callee"]] += int(row["count"])
                continue
            decision = UNAVAILABLE if row["reason"] == REPLAY_STORE_UNAVAILABLE else row["decision"]
            key = (row["caller"], row["callee"], f"{row['method']} {row['path']}", decision)
            grouped[key]["count"] += int(row["count"])
            if row["decision"] != "allow":
                grouped[key]["reasons"].add(row["reason"])
    report.rows = [
        Row(caller, callee, route, decision, value["count"], tuple(sorted(value["reasons"])))
        for (caller, callee, route, decision), value in sorted(grouped.items())
    ]
    report.would_deny = [r for r in report.rows if r.decision not in ("allow", UNAVAILABLE)]
    for r in report.would_deny:
        report.refusals.append(
            f"{r.caller} -> {r.callee} {r.route}: {r.count} request(s) would be refused "
            f"({', '.join(r.reasons)})"
        )
    _judge_store_misses(report)
    report.public_requests = dict(public)
    seen = {(r.caller, r.callee) for r in report.rows if r.decision == "allow"}
    report.unseen_grants = [
        grant for grant in _granted_routes(services) if tuple(grant.split(" ")[0:3:2]) not in seen
    ]
    report.passed = not report.refusals or bool(report.override)
    return report
