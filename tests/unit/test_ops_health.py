"""The health table's folding of ansible-runner events (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console
from tests.unit.ops_replay import load_stream

from autobot.ops.health import KeyVersions, Release, health_table, keys_table, machines_from_events

BASE = {"group": "g", "systemd": "running", "base_dirs_ok": True}


def _ok(host: str, report: dict[str, Any], task: str = "Report machine health") -> dict[str, Any]:
    return {
        "event": "runner_on_ok",
        "event_data": {"host": host, "task": task, "res": {"autobot_health": report}},
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


def test_the_report_is_found_by_its_variable_whatever_the_task_is_called() -> None:
    [m] = machines_from_events([_ok("a", {**BASE, "services": {}}, task="Renamed: say how the machine is")])
    assert m.healthy
    assert m.group == "g"


def test_the_recorded_health_run_of_the_stand_in_project() -> None:
    machines = machines_from_events(load_stream("health-after-site"))
    assert [m.host for m in machines] == ["node-a", "node-b"]
    a = machines[0]
    assert a.healthy
    assert a.release == Release(
        id="20250101T000000Z-abc1234", commit="abc1234", built_at="2025-01-01T00:00:00Z"
    )
    assert a.phase == "logging"
    assert a.keys == KeyVersions(signing="main-backend:v2", verifying=("npu-worker:v1",))
    assert a.redis_password_generation == 3


@pytest.mark.parametrize("state", ["not deployed", "down"])
def test_a_service_that_is_not_listening_needs_attention(state: str) -> None:
    # site.yml deploys every service of the matrix: "not deployed" is no longer healthy
    [m] = machines_from_events([_ok("a", {**BASE, "services": {"s": state}})])
    assert not m.healthy


def test_degraded_systemd_needs_attention() -> None:
    [m] = machines_from_events([_ok("b", {**BASE, "systemd": "degraded", "services": {}})])
    assert not m.healthy


def test_missing_new_fields_are_unknown_not_errors() -> None:
    [m] = machines_from_events([_ok("a", {**BASE, "services": {}})])
    assert (m.release, m.phase, m.keys, m.redis_password_generation) == (None, None, None, None)
    assert m.healthy


@pytest.mark.parametrize(
    "odd",
    [
        {"release": "not a mapping", "phase": None, "keys": ["x"], "redis_password_generation": "many"},
        {
            "release": {"commit": "no id"},
            "phase": "",
            "keys": {"verifying": "not a list"},
            "redis_password_generation": True,
        },
        {"services": "not a mapping"},
    ],
)
def test_odd_fields_are_tolerated(odd: dict[str, Any]) -> None:
    [m] = machines_from_events([_ok("a", {**BASE, "services": {}, **odd})])
    assert m.release is None
    assert m.phase is None
    assert m.redis_password_generation is None
    assert m.keys is None or m.keys.verifying == ()


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
        {
            "event": "runner_on_ok",
            "event_data": {"host": "a", "task": "Other", "res": {"autobot_health": "x"}},
        },
    ]
    assert machines_from_events(events) == []


def test_the_table_names_every_machine_with_its_release_and_phase() -> None:
    machines = machines_from_events(
        [
            _ok(
                "m1",
                {
                    **BASE,
                    "services": {"s": "not deployed"},
                    "release": {"id": "20250101T120000Z-abc1234", "commit": "abc1234", "built_at": "x"},
                    "phase": "enforcement",
                },
            ),
            _ok("m2", {**BASE, "services": {}}),
        ]
    )
    console = Console(record=True, width=160)
    console.print(health_table(machines, title="t"))
    text = console.export_text()
    [m1] = [line for line in text.splitlines() if " m1 " in line]
    assert "20250101T120000Z-abc1234" in m1
    assert "enforcement" in m1
    assert "attention" in m1
    [m2] = [line for line in text.splitlines() if " m2 " in line]
    assert "healthy" in m2


def test_the_keys_table_names_versions_and_generations_only() -> None:
    machines = machines_from_events(
        [
            _ok(
                "autobot-npu-worker",
                {
                    **BASE,
                    "services": {},
                    "keys": {"signing": "npu-worker:v1", "verifying": ["ai-stack:v1", "main-backend:v2"]},
                    "redis_password_generation": 2,
                },
            ),
            _ok(
                "autobot-frontend",
                {**BASE, "services": {}, "keys": {"signing": "frontend:v1", "verifying": []}},
            ),
            {"event": "runner_on_unreachable", "event_data": {"host": "gone", "res": {"msg": "no route"}}},
        ]
    )
    console = Console(record=True, width=160)
    console.print(keys_table(machines, title="t"))
    text = console.export_text()
    [npu] = [line for line in text.splitlines() if "autobot-npu-worker" in line]
    assert "npu-worker:v1" in npu
    assert "ai-stack:v1, main-backend:v2" in npu
    assert "generation 2" in npu
    [frontend] = [line for line in text.splitlines() if "autobot-frontend" in line]
    assert frontend.split() == ["│", "autobot-frontend", "│", "frontend:v1", "│", "-", "│", "-", "│"]
    assert "gone" not in text
