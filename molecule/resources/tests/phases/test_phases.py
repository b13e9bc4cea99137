"""The service-authentication phases as an operator runs them (the plan's tasks 3.7-3.11), under live traffic.

Legitimate users talk to main-backend the whole time (chat answered through ai-stack, text processing on
npu-worker, browser sessions on browser-service: every service call signed). A rogue caller without keys sends
unsigned and wrongly signed requests to npu-worker from the browser-service machine. The tests run in order
and share the cluster's state.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from conftest import REPO, RESULTS_DIR, Traffic, recap, run_playbook

BACKEND, NPU, ROGUE_HOST, FRONTEND = (
    "autobot-main-backend",
    "autobot-npu-worker",
    "autobot-browser-service",
    "autobot-frontend",
)
PYTHON_HOSTS = ("autobot-main-backend", "autobot-npu-worker", "autobot-ai-stack", "autobot-browser-service")
LEGIT_TARGET = "http://127.0.0.1:8001"
ROGUE_TARGET = "http://autobot-npu-worker:8081"
# The molecule inventory asks the logging phase to run this long before the gate lets enforcement begin.
GATE_MIN_S = 60
STATE: dict[str, Any] = {}


def _save(name: str, data: Any) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"phases-{name}.json").write_text(json.dumps(data, indent=2))


def _text(result: Any) -> str:
    """What the run printed, with Ansible's line wrapping undone (messages are searched for phrases)."""
    return " ".join(str(result.stdout + result.stderr).split())


def _phase(host: Any, service: str) -> str:
    return str(json.loads(host.check_output(f"cat /etc/autobot/{service}/service-auth.json"))["phase"])


def _legit(machine: Any, name: str, duration: float) -> Traffic:
    return Traffic(
        machine(BACKEND), name, "legit", LEGIT_TARGET, duration=duration, users=4, pause=0.05
    ).start()


def _rogue(machine: Any, name: str, count: int) -> Traffic:
    return Traffic(
        machine(ROGUE_HOST), name, "rogue", ROGUE_TARGET, duration=60, count=count, pause=0.2
    ).start()


def test_logging_phase_passes_everything_and_the_gate_names_the_rogue(machine: Any) -> None:
    same = run_playbook("deploy-service-auth.yml", "-e", "middleware_file=service_auth_logging.py")
    assert same.returncode == 0, _text(same)[-3000:]
    assert all(counts["changed"] == 0 for counts in recap(same.stdout).values()), (
        "the phase was already logging"
    )

    legit, rogue = _legit(machine, "logging", 40), _rogue(machine, "logging-rogue", 30)
    rogue_result, legit_result = rogue.wait(), legit.wait()
    assert legit_result["requests"] > 50
    assert legit_result["failed"] == 0, legit_result["failures"][:5]
    # The logging phase refuses nothing: the rogue's requests reach npu-worker's app.
    assert set(rogue_result["statuses"]) == {"unsigned 200", "signed-with-a-made-up-key 200"}

    gate = run_playbook("service-auth-gate.yml")
    text = _text(gate)
    assert gate.returncode != 0, "the gate must refuse while would-deny lines exist"
    assert "The rollout gate refuses enforcement" in text
    assert "npu-worker POST /api/process" in text
    assert "missing_header" in text
    assert "bad_signature" in text
    report = sorted((REPO / ".autobot" / "gate").glob("*-gate.json"))[-1]
    data = json.loads(report.read_text())
    assert not data["passed"]
    assert {row["reasons"][0].split(":")[0] for row in data["would_deny"]} >= {
        "missing_header",
        "bad_signature",
    }
    _save("gate-refused", data)


def test_a_fresh_window_without_the_rogue_passes_the_gate(machine: Any) -> None:
    STATE["window"] = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    legit = _legit(machine, "window", GATE_MIN_S + 10).wait()
    assert legit["failed"] == 0, legit["failures"][:5]
    gate = run_playbook("service-auth-gate.yml", "-e", f"gate_since={STATE['window']}")
    assert gate.returncode == 0, _text(gate)[-3000:]
    assert "gate PASSED" in gate.stdout
    report = json.loads(sorted((REPO / ".autobot" / "gate").glob("*-gate.json"))[-1].read_text())
    assert report["passed"]
    assert not report["would_deny"]
    assert {row["callee"] for row in report["rows"]} >= {"ai-stack", "npu-worker", "browser-service"}
    _save("gate-passed", report)


def test_enforcement_under_live_traffic_refuses_only_the_rogue(machine: Any) -> None:
    legit = _legit(machine, "enforcement", 240)
    time.sleep(3)
    switch = run_playbook(
        "deploy-service-auth.yml", "-e", "middleware_file=service_auth_enforcement.py", "-e",
        f"gate_since={STATE['window']}",
    )  # fmt: skip
    assert switch.returncode == 0, _text(switch)[-3000:]
    for name in PYTHON_HOSTS:
        service = name.removeprefix("autobot-")
        assert _phase(machine(name), service) == "enforcement"
        # The plan's check: the entry file names the enforcement middleware.
        assert (
            machine(name).run(f"grep -l ServiceAuthEnforcementMiddleware /etc/autobot/{service}/asgi.py").rc
            == 0
        )
    rogue = _rogue(machine, "enforcement-rogue", 20).wait()
    time.sleep(5)
    legit.stop()
    result = legit.wait()
    assert result["failed"] == 0, result["failures"][:5]
    assert set(rogue["statuses"]) == {"unsigned 401", "signed-with-a-made-up-key 401"}
    # The plan's curl, from a machine without keys.
    code = machine(FRONTEND).check_output(
        "curl -s -o /dev/null -w '%{http_code}' -X POST http://autobot-npu-worker:8081/api/process"
    )
    assert code == "401"
    _save("enforcement", {"legit": result, "rogue": rogue, "plan_curl": code})


def test_rollback_to_logging_under_live_traffic(machine: Any) -> None:
    legit = _legit(machine, "rollback", 240)
    time.sleep(3)
    back = run_playbook("rollback-service-auth.yml")
    assert back.returncode == 0, _text(back)[-3000:]
    time.sleep(5)
    legit.stop()
    result = legit.wait()
    assert result["failed"] == 0, result["failures"][:5]
    for name in PYTHON_HOSTS:
        assert _phase(machine(name), name.removeprefix("autobot-")) == "logging"
    _save("rollback", {"legit": result})


def test_a_phase_that_does_not_come_up_puts_the_previous_one_back_and_says_why(machine: Any) -> None:
    """npu-worker cannot read its master key: enforcement refuses to start without it (logging only logs).
    The rollout stops at npu-worker with the service's own error, logging serves there again, and no other
    machine changed. The gate is overridden (recorded) so that only the health gate is under test."""
    npu, key = machine(NPU), "/etc/autobot/service-keys/master.v1.key"
    others = {
        name: _phase(machine(name), name.removeprefix("autobot-")) for name in PYTHON_HOSTS if name != NPU
    }
    npu.check_output(f"chmod 0600 {key}")
    try:
        failed = run_playbook(
            "deploy-service-auth.yml", "-e", "middleware_file=service_auth_enforcement.py",
            "-e", "gate_override='test: a phase that does not come up'", "-e", "release_health_retries=5",
        )  # fmt: skip
    finally:
        npu.check_output(f"chmod 0640 {key}")
    text = _text(failed)
    assert failed.returncode != 0
    assert "the enforcement phase failed its health gate" in text
    assert "the previous phase (logging) is back and serving" in text
    assert "master.v1.key: Permission denied" in text, text[-3000:]
    assert _phase(npu, "npu-worker") == "logging"
    assert npu.run("grep -l ServiceAuthLoggingMiddleware /etc/autobot/npu-worker/asgi.py").rc == 0
    assert npu.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/api/ready") == "200"
    # Logging serves: a request without a signature reaches the app (422: its body is not a task).
    code = machine(FRONTEND).check_output(
        "curl -s -o /dev/null -w '%{http_code}' -X POST http://autobot-npu-worker:8081/api/process"
    )
    assert code == "422"
    assert {name: _phase(machine(name), name.removeprefix("autobot-")) for name in others} == others


def test_rerunning_the_same_phase_changes_nothing() -> None:
    again = run_playbook("deploy-service-auth.yml", "-e", "middleware_file=service_auth_logging.py")
    assert again.returncode == 0, _text(again)[-3000:]
    assert all(counts["changed"] == 0 for counts in recap(again.stdout).values())


def test_an_unknown_middleware_file_is_refused_before_anything_changes(machine: Any) -> None:
    before = machine(NPU).check_output("sha256sum /etc/autobot/npu-worker/asgi.py")
    refused = run_playbook("deploy-service-auth.yml", "-e", "middleware_file=service_auth_off.py")
    assert refused.returncode != 0
    assert "is not a phase" in _text(refused)
    assert machine(NPU).check_output("sha256sum /etc/autobot/npu-worker/asgi.py") == before
