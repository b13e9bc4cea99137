"""`autobot ops` end to end on recorded ansible-runner event streams (tests/unit/ops_replay.py).

The stand-in project is copied into a temporary folder and the CLI runs from there, so run folders land in the
copy. No inventory's machines are contacted: the replay hands over events recorded on this machine.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.unit.ops_replay import copy_project, install_replay

from autobot.cli import main

ROOT = Path(__file__).resolve().parents[2]
SITE = "playbooks/site.yml"
DEPLOY = "playbooks/deploy-services.yml"
HEALTH = "playbooks/health.yml"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = copy_project(tmp_path)
    monkeypatch.chdir(project)
    return project


def _ops(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["ops", *args], input=input)


def _runs(project: Path) -> list[Path]:
    runs = project / ".autobot" / "runs"
    return sorted(runs.iterdir()) if runs.is_dir() else []


def _rows(output: str, host: str) -> list[list[str]]:
    """The host's row in each table of the output, in order."""
    lines = [line for line in output.splitlines() if line.startswith("│") and f" {host} " in line]
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]


def _row(output: str, host: str) -> list[str]:
    [row] = _rows(output, host)
    return row


def test_a_successful_run_shows_the_command_progress_and_a_summary_per_host(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = install_replay(monkeypatch, {SITE: "site-ok", HEALTH: "health-after-site"})
    result = _ops("site")
    assert result.exit_code == 0, result.output
    assert "ansible-playbook -i inventory/local playbooks/site.yml" in result.output
    # the progress (its last frame, as a log file gets it): play, task n of total, counters, elapsed
    assert "play: Write the release marker" in result.output
    assert "task 4 of ~4" in result.output
    assert re.search(
        r"hosts 2\s+ok 8\s+changed 6\s+failed 0\s+unreachable 0\s+elapsed \d+:\d\d:\d\d", result.output
    )
    # the summary: recap counters, then release, phase and keys from the health run after the action
    assert _row(result.output, "node-a") == [
        "node-a",
        "4",
        "3",
        "0",
        "0",
        "20250101T000000Z-abc1234",
        "logging",
        "signs main-backend:v2; verifies npu-worker:v1",
    ]
    assert [call[0] for call in replay.calls] == [SITE, HEALTH]
    [run] = _runs(project)
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-site", run.name)
    assert (run / "health" / "job_events").is_dir()
    assert json.loads((run / "autobot-run.json").read_text())["tasks"] == 4
    assert f"run folder: {run}" in result.output


def test_a_failure_exits_non_zero_naming_host_task_and_message(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_replay(monkeypatch, {DEPLOY: "deploy-failed", HEALTH: "health-after-deploy"})
    result = _ops("deploy")
    assert result.exit_code == 1
    assert (
        'FAILED on node-b, task "Check the new release\'s health": '
        "npu-worker did not answer /api/health within 30 s (release 20250102T000000Z-def5678)"
    ) in result.output
    assert "failed 1 (node-b)" in result.output
    # what serves now: node-a flipped, node-b kept the release it had
    assert _row(result.output, "node-a")[5] == "20250102T000000Z-def5678"
    assert _row(result.output, "node-b")[1:6] == ["2", "1", "1", "0", "20250101T000000Z-abc1234"]


def test_an_unreachable_local_cluster_is_said_plainly(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replay = install_replay(monkeypatch, {SITE: "site-unreachable"})
    result = _ops("site")
    assert result.exit_code == 1
    assert "the local cluster is not running: run `make up`" in result.output
    assert "Failed to create temporary directory" not in result.output
    assert [call[0] for call in replay.calls] == [SITE]  # no health run against machines that are not there
    assert "unreachable 2 (node-a, node-b)" in result.output


def test_status_prints_the_health_table_with_release_and_phase(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = install_replay(monkeypatch, {HEALTH: "health-after-site"})
    result = _ops("status")
    assert result.exit_code == 0, result.output
    assert "ansible-playbook -i inventory/local playbooks/health.yml" in result.output
    for column in ("release", "phase", "services", "state"):
        assert column in result.output
    health, keys = _rows(result.output, "node-b")
    assert health[5:7] == ["20250101T000000Z-abc1234", "logging"]
    assert health[-1] == "healthy"
    # The second table: key versions and the Redis password generation, never material.
    assert "Service keys and Redis passwords (versions only)" in result.output
    [_, keys_a] = _rows(result.output, "node-a")
    assert keys_a == ["node-a", "main-backend:v2", "npu-worker:v1", "generation 3"]
    assert keys[0] == "node-b"
    assert [call[0] for call in replay.calls] == [HEALTH]  # status reads health once, not twice


def test_status_of_a_local_cluster_that_is_down(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_replay(monkeypatch, {HEALTH: "site-unreachable"})
    result = _ops("status")
    assert result.exit_code == 1
    assert "the local cluster is not running: run `make up`" in result.output


def _production_copy(project: Path) -> str:
    """A copy of the stand-in inventory that says it is production (its hosts are still this machine)."""
    target = project / "inventory" / "prod"
    shutil.copytree(project / "inventory" / "local", target)
    hosts = target / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("autobot_env: local", "autobot_env: production"))
    return "inventory/prod"


def test_production_needs_the_typed_environment_name(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replay = install_replay(monkeypatch, {SITE: "site-ok", HEALTH: "health-after-site"})
    inventory = _production_copy(project)

    refused = _ops("site", "-i", inventory, input="yes\n")
    assert refused.exit_code == 1
    assert "PRODUCTION" in refused.output
    assert "nothing was run" in refused.output
    assert replay.calls == []
    assert _runs(project) == []

    no_answer = _ops("site", "-i", inventory, input="")
    assert no_answer.exit_code == 1
    assert replay.calls == []

    typed = _ops("site", "-i", inventory, input="production\n")
    assert typed.exit_code == 0, typed.output
    assert replay.calls[0] == (SITE, ["-i", inventory])


def test_yes_skips_the_confirmation(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replay = install_replay(monkeypatch, {SITE: "site-ok", HEALTH: "health-after-site"})
    result = _ops("site", "-i", _production_copy(project), "--yes")
    assert result.exit_code == 0, result.output
    assert "Type the environment name" not in result.output
    assert len(replay.calls) == 2


def test_check_mode_passes_check_and_diff_and_the_common_options(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = install_replay(monkeypatch, {SITE: "site-ok", HEALTH: "health-after-site"})
    result = _ops("site", "--check", "-e", "a=1", "--limit", "node-a", "-v")
    assert result.exit_code == 0, result.output
    expected = ["-i", "inventory/local", "-e", "a=1", "--limit", "node-a", "--check", "--diff", "-v"]
    assert replay.calls[0] == (SITE, expected)
    # the health read afterwards is never in check mode, and keeps the operator's -e and --limit
    assert replay.calls[1] == (HEALTH, ["-i", "inventory/local", "-e", "a=1", "--limit", "node-a"])
    assert (
        "ansible-playbook -i inventory/local playbooks/site.yml -e a=1 --limit node-a --check --diff -v"
        in (result.output)
    )
    assert "changed: [node-a]" in result.output  # -v prints ansible's own lines too


def test_a_playbook_that_does_not_exist_yet_is_said_plainly(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = install_replay(monkeypatch, {})
    for args in (["gate"], ["phase", "enforcement"], ["rotate", "keys"], ["revoke", "main-backend:v1"]):
        result = _ops(*args)
        assert result.exit_code == 2, args
        assert "does not exist yet in this checkout" in result.output
    assert replay.calls == []


def test_bad_input_changes_nothing(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = project / "inventory" / "group_vars" / "all"
    matrix.mkdir(parents=True)
    shutil.copy(ROOT / "inventory" / "group_vars" / "all" / "services.yml", matrix / "services.yml")
    replay = install_replay(monkeypatch, {DEPLOY: "deploy-failed"})
    for args in (
        ["deploy", "--service", "no-such-service"],
        ["phase", "enforcing"],
        ["revoke", "main-backend"],
        ["site", "-i", "inventory/absent"],
        ["rollback", "services", "--release", "../x"],
    ):
        result = _ops(*args)
        assert result.exit_code == 2, (args, result.output)
    unknown = _ops("deploy", "--service", "no-such-service")
    assert "expected one of" in unknown.output
    assert "main-backend" in unknown.output
    assert replay.calls == []
    assert _runs(project) == []


def test_help_shows_the_equivalent_ansible_playbook_command() -> None:
    runner = CliRunner()
    deploy = runner.invoke(main, ["ops", "deploy", "--help"])
    assert (
        "ansible-playbook -i inventory/local playbooks/deploy-services.yml [-e service=ID]" in deploy.output
    )
    phase = runner.invoke(main, ["ops", "phase", "--help"])
    assert "-e middleware_file=service_auth_logging.py|service_auth_enforcement.py|none" in phase.output
    revoke = runner.invoke(main, ["ops", "revoke", "--help"])
    assert "playbooks/rotate-service-keys.yml -e revoke=SERVICE:vN" in revoke.output
    rollback = runner.invoke(main, ["ops", "rollback", "services", "--help"])
    assert "playbooks/rollback-services.yml [-e service=ID] [-e release=ID]" in rollback.output


def test_run_folders_are_rotated_to_the_newest(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_replay(monkeypatch, {SITE: "site-ok", HEALTH: "health-after-site"})
    for _ in range(3):
        assert CliRunner().invoke(main, ["ops", "--keep-runs", "2", "site"]).exit_code == 0
    runs = _runs(project)
    assert len(runs) == 2
    # the newest identical successful run gives the next run an exact total (no "~")
    result = _ops("site")
    assert "task 4 of 4" in result.output


def test_the_run_folder_is_git_ignored() -> None:
    assert "/.autobot/" in (ROOT / ".gitignore").read_text().splitlines()
