"""The rollout gate (`autobot.ops.gate.decide`) and its input, `autobot audit summary`.

The gate alone decides whether the cluster may leave the logging phase for enforcement, so a wrong pass
locks services out of each other. Its input is built the way production builds it: audit lines from the
service's own formatter (`audit_line`), summarised by `summarise`, and the real service matrix. The CLI tests
pin the window: with several `--since` values the latest counts, in whatever order they are given.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from autobot.cli import main
from autobot.ops.gate import Row, decide
from autobot.security.audit import audit_line
from autobot.security.audit_summary import MAX_UNROUTED_PATHS, OTHER_PATHS, summarise
from autobot.security.decision import Decision, RouteKind

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIN_S = 3600


def line(
    when: datetime,
    caller: str | None,
    callee: str,
    method: str,
    path: str,
    *,
    status: int = 200,
    reason: str = "ok",
    kind: RouteKind = "service",
) -> str:
    decision = Decision(status=status, reason=reason, route_kind=kind, caller=caller)
    return audit_line(
        decision=decision, callee=callee, method=method, raw_path=path.encode(), phase="logging", when=when
    )


def machine(
    service: str, lines: list[str], *, phase: str | None = "logging", ran_s: int = MIN_S
) -> dict[str, Any]:
    since = NOW - timedelta(seconds=ran_s)
    return {
        "service": service,
        "phase": phase,
        "since": since.isoformat().replace("+00:00", "Z"),
        "summary": summarise(lines, since).to_dict(),
    }


@pytest.fixture(scope="module")
def services(services_matrix_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(services_matrix_file.read_text(encoding="utf-8"))
    return dict(data["autobot_services"])


T = NOW - timedelta(minutes=5)
ALLOWED = line(T, "main-backend", "ai-stack", "POST", "/api/inference")


def test_passes_when_every_machine_logged_long_enough_and_all_allowed(services: dict[str, Any]) -> None:
    machines = {"ai1": machine("ai-stack", [ALLOWED, ALLOWED]), "npu1": machine("npu-worker", [])}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert report.passed, report.refusals
    assert report.refusals == []
    assert report.would_deny == []
    assert report.rows == [Row("main-backend", "ai-stack", "POST /api/inference", "allow", 2, ())]
    assert report.machines["ai1"]["ran_s"] == MIN_S
    assert report.table().splitlines()[-1] == "gate PASSED"


def test_refuses_naming_the_host_whose_logging_phase_is_too_short(services: dict[str, Any]) -> None:
    machines = {"ai1": machine("ai-stack", [ALLOWED]), "npu1": machine("npu-worker", [], ran_s=MIN_S - 1)}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert not report.passed
    assert len(report.refusals) == 1
    assert report.refusals[0].startswith(f"npu1: the logging phase ran {MIN_S - 1} s of the {MIN_S} s")
    assert report.machines["npu1"]["ran_s"] == MIN_S - 1


def test_a_machine_already_enforcing_is_not_held_to_the_minimum_duration(services: dict[str, Any]) -> None:
    machines = {"ai1": machine("ai-stack", [ALLOWED], phase="enforcement", ran_s=10)}
    assert decide(machines, services, now=NOW, min_duration_s=MIN_S).passed


@pytest.mark.parametrize("phase", ["none", None, "enforcing"])
def test_refuses_a_machine_not_in_the_logging_phase(services: dict[str, Any], phase: str | None) -> None:
    machines = {"ai1": machine("ai-stack", [ALLOWED]), "web1": machine("main-backend", [], phase=phase)}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert not report.passed
    assert [r.split(":")[0] for r in report.refusals] == ["web1"]
    assert "not in the logging phase" in report.refusals[0]


def test_would_deny_rows_refuse_with_caller_callee_route_and_reasons(services: dict[str, Any]) -> None:
    denied = [
        line(T, "browser-service", "ai-stack", "GET", "/api/models", status=403, reason="not_granted"),
        line(T, "browser-service", "ai-stack", "GET", "/api/models", status=401, reason="bad_signature"),
        line(T, "browser-service", "ai-stack", "GET", "/api/models", status=403, reason="not_granted"),
    ]
    before_phase = line(NOW - timedelta(days=1), "x", "ai-stack", "GET", "/old", status=403, reason="x")
    machines = {"ai1": machine("ai-stack", [before_phase, ALLOWED, *denied])}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert not report.passed
    assert report.would_deny == [
        Row("browser-service", "ai-stack", "GET /api/models", "deny", 3, ("bad_signature", "not_granted"))
    ]
    assert report.refusals == [
        "browser-service -> ai-stack GET /api/models: 3 request(s) would be refused"
        " (bad_signature, not_granted)"
    ]
    table = report.table()
    assert "GET /api/models" in table
    assert "bad_signature, not_granted" in table
    assert "gate REFUSED" in table
    assert "  - browser-service -> ai-stack" in table


MISSED = line(
    T, "main-backend", "npu-worker", "POST", "/api/process", status=503, reason="replay_store_unavailable"
)
PROCESSED = line(T, "main-backend", "npu-worker", "POST", "/api/process")


def test_an_occasional_replay_store_miss_is_noted_not_a_refusal(services: dict[str, Any]) -> None:
    """The request was authentic and granted; Redis answered later than the logging phase's 50 ms (as under
    load). Enforcement waits 500 ms, so this says nothing about a caller it would refuse."""
    machines = {"npu1": machine("npu-worker", [MISSED] * 2 + [PROCESSED] * 298)}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert report.passed, report.refusals
    assert report.would_deny == []
    missed = Row(
        "main-backend", "npu-worker", "POST /api/process", "unavailable", 2, ("replay_store_unavailable",)
    )
    assert missed in report.rows
    assert report.notes == [
        "main-backend -> npu-worker POST /api/process: 2 of 300 request(s) (0.67%) found the replay store"
        " (Redis) slower than the logging phase's budget; tolerated (at most 1%)"
    ]
    assert "note: main-backend -> npu-worker" in report.table()
    assert report.to_dict()["notes"] == report.notes


def test_replay_store_misses_over_the_tolerance_refuse_and_point_at_redis(services: dict[str, Any]) -> None:
    machines = {"npu1": machine("npu-worker", [MISSED] * 2 + [PROCESSED] * 98)}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert not report.passed
    assert report.would_deny == []
    assert report.notes == []
    assert len(report.refusals) == 1
    assert report.refusals[0].startswith(
        "main-backend -> npu-worker POST /api/process: 2 of 100 request(s) (2.00%)"
    )
    assert "look at Redis" in report.refusals[0]


def test_a_replay_store_miss_does_not_hide_a_would_deny_on_the_same_route(services: dict[str, Any]) -> None:
    unsigned = line(
        T, "main-backend", "npu-worker", "POST", "/api/process", status=401, reason="missing_header"
    )
    machines = {"npu1": machine("npu-worker", [MISSED, unsigned] + [PROCESSED] * 198)}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert not report.passed
    assert [r.reasons for r in report.would_deny] == [("missing_header",)]
    assert report.refusals == [
        "main-backend -> npu-worker POST /api/process: 1 request(s) would be refused (missing_header)"
    ]
    assert len(report.notes) == 1


def test_public_route_rows_are_counted_apart_never_as_would_deny(services: dict[str, Any]) -> None:
    public = [
        line(T, None, "main-backend", "POST", "/api/chat", reason="public_route", kind="public"),
        line(T, None, "main-backend", "GET", "/api/x", status=401, reason="unsafe_path", kind="public"),
        line(T, None, "ai-stack", "GET", "/api/health", reason="public_route", kind="public"),
    ]
    machines = {"web1": machine("main-backend", public[:2]), "ai1": machine("ai-stack", [ALLOWED, public[2]])}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S)
    assert report.passed, report.refusals
    assert report.would_deny == []
    assert [r.callee for r in report.rows] == ["ai-stack"]
    assert report.public_requests == {"main-backend": 2, "ai-stack": 1}
    assert "public (user) requests, counted apart: ai-stack 1, main-backend 2" in report.table()


def test_override_passes_but_is_recorded_with_the_refusals(services: dict[str, Any]) -> None:
    when = NOW - timedelta(seconds=30)  # inside the 60 s the phase has run
    denied = line(when, "main-backend", "ai-stack", "DELETE", "/api/models", status=403, reason="not_granted")
    machines = {"ai1": machine("ai-stack", [denied], ran_s=60)}
    report = decide(machines, services, now=NOW, min_duration_s=MIN_S, override="INC-42 hotfix")
    assert report.passed
    assert report.override == "INC-42 hotfix"
    assert [r.split(":")[0] for r in report.refusals] == [
        "ai1",
        "main-backend -> ai-stack DELETE /api/models",
    ]
    assert report.to_dict()["override"] == "INC-42 hotfix"
    assert report.to_dict()["refusals"] == report.refusals
    assert "gate PASSED (override: INC-42 hotfix)" in report.table()
    assert not decide(machines, services, now=NOW, min_duration_s=MIN_S, override="").passed


def test_unseen_grants_list_matrix_grants_no_allowed_call_used(services: dict[str, Any]) -> None:
    denied = line(
        T, "browser-service", "ai-stack", "POST", "/api/inference", status=401, reason="bad_signature"
    )
    report = decide({"ai1": machine("ai-stack", [ALLOWED, denied])}, services, now=NOW, min_duration_s=MIN_S)
    assert "browser-service -> ai-stack POST /api/inference" in report.unseen_grants  # a deny is no use
    assert "main-backend -> npu-worker POST /api/process" in report.unseen_grants
    assert not [g for g in report.unseen_grants if g.startswith("main-backend -> ai-stack ")]
    assert "granted but never called in the window: " in report.table()


# --- `autobot audit summary` -------------------------------------------------------------------------------

T1, T2, T3 = (datetime(2025, 3, 1, h, 0, tzinfo=UTC) for h in (9, 10, 11))


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def run_summary(tmp_path: Path, *since: str) -> tuple[int, str]:
    log = tmp_path / "audit.log"
    log.write_text("".join(line(t, "main-backend", "ai-stack", "GET", "/api/models") for t in (T1, T2, T3)))
    args = ["audit", "summary", "--log", str(log)]
    for value in since:
        args += ["--since", value]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def counted(output: str) -> tuple[int, str | None]:
    summary = json.loads(output)
    return sum(row["count"] for row in summary["rows"]), summary["first"]


def test_summary_without_since_counts_every_line(tmp_path: Path) -> None:
    code, output = run_summary(tmp_path)
    assert code == 0, output
    assert counted(output) == (3, iso(T1).replace("Z", ".000Z"))


def test_summary_leaves_out_lines_before_since(tmp_path: Path) -> None:
    code, output = run_summary(tmp_path, iso(T2))
    assert code == 0, output
    assert counted(output) == (2, iso(T2).replace("Z", ".000Z"))


@pytest.mark.parametrize("order", [(T2, T3), (T3, T2)], ids=["later-last", "later-first"])
def test_summary_with_two_since_values_the_later_counts(tmp_path: Path, order: tuple[datetime, ...]) -> None:
    code, output = run_summary(tmp_path, *(iso(t) for t in order))
    assert code == 0, output
    assert counted(output) == (1, iso(T3).replace("Z", ".000Z"))
    assert json.loads(output)["since"] == iso(T3)


@pytest.mark.parametrize(
    ("value", "message"),
    [("2025-03-01T10:00:00", "give a time zone"), ("yesterday", "not an ISO 8601 time: 'yesterday'")],
)
def test_summary_refuses_a_bad_since(tmp_path: Path, value: str, message: str) -> None:
    code, output = run_summary(tmp_path, iso(T1), value)
    assert code == 2
    assert "--since" in output
    assert message in output


def test_summary_with_the_matrix_counts_paths_under_their_routes(
    tmp_path: Path, services_matrix_file: Path
) -> None:
    """A day of session deletions is one row per route, not one per session id; a scanner's paths under no
    route are kept, the most frequent MAX_UNROUTED_PATHS of them, the rest counted together."""
    log = tmp_path / "audit.log"
    deletions = [
        line(T2, "main-backend", "browser-service", "DELETE", f"/api/sessions/{n:032x}") for n in range(300)
    ]
    scans = [line(T2, None, "browser-service", "GET", f"/scan/{n}", status=401, reason="missing_header")
             for n in range(MAX_UNROUTED_PATHS + 25)]  # fmt: skip
    log.write_text("".join(deletions + scans))
    result = CliRunner().invoke(
        main, ["audit", "summary", "--log", str(log), "--matrix", str(services_matrix_file)]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    routed = [row for row in rows if row["method"] == "DELETE"]
    assert [(row["path"], row["count"]) for row in routed] == [("/api/sessions/**", 300)]
    scanned = {row["path"]: row["count"] for row in rows if row["method"] == "GET"}
    assert len(scanned) == MAX_UNROUTED_PATHS + 1
    assert scanned[OTHER_PATHS] == 25
    assert sum(scanned.values()) == MAX_UNROUTED_PATHS + 25


def test_summary_refuses_an_unreadable_matrix(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("")
    result = CliRunner().invoke(
        main, ["audit", "summary", "--log", str(log), "--matrix", str(tmp_path / "nope.yml")]
    )
    assert result.exit_code == 2
    assert "cannot read matrix file" in result.output
