"""The health table's folding of ansible-runner events (pure)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from autobot.ops.health import REPORT_TASK, health_table, machines_from_events


def _ok(host: str, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "runner_on_ok",
        "event_data": {"host": host, "task": REPORT_TASK, "res": {"autobot_health": report}},
    }


def test_a_healthy_machine() -> None:
    [m] = machines_from_events(
        [
            _ok(
                "autobot-npu-worker",
                {
                    "group": "npu_worker",
                    "systemd": "running",
                    "base_dirs_ok": True,
                    "services": {"npu-worker": "listening"},
                },
            )
        ]
    )
    assert m.healthy
    assert m.reached
    assert m.services == {"npu-worker": "listening"}


def test_a_service_not_deployed_yet_is_not_a_fault() -> None:
    [m] = machines_from_events(
        [
            _ok(
                "a",
                {"group": "g", "systemd": "running", "base_dirs_ok": True, "services": {"s": "not deployed"}},
            )
        ]
    )
    assert m.healthy


def test_a_service_down_or_degraded_systemd_needs_attention() -> None:
    down, degraded = machines_from_events(
        [
            _ok("a", {"group": "g", "systemd": "running", "base_dirs_ok": True, "services": {"s": "down"}}),
            _ok("b", {"group": "g", "systemd": "degraded", "base_dirs_ok": True, "services": {}}),
        ]
    )
    assert not down.healthy
    assert not degraded.healthy


def test_unreachable_hosts_are_reported_with_their_error() -> None:
    [m] = machines_from_events(
        [
            {
                "event": "runner_on_unreachable",
                "event_data": {"host": "x", "res": {"msg": "no such container\nmore"}},
            }
        ]
    )
    assert not m.reached
    assert not m.healthy
    assert m.error == "no such container"


def test_other_tasks_and_hostless_events_are_ignored() -> None:
    events = [
        {"event": "playbook_on_start", "event_data": {}},
        {"event": "runner_on_ok", "event_data": {"host": "a", "task": "Other", "res": {}}},
    ]
    assert machines_from_events(events) == []


def test_the_table_names_every_machine() -> None:
    machines = machines_from_events(
        [_ok("m1", {"group": "g1", "systemd": "running", "base_dirs_ok": True, "services": {}})]
    )
    console = Console(record=True, width=160)
    console.print(health_table(machines, title="t"))
    text = console.export_text()
    assert "m1" in text
    assert "healthy" in text
