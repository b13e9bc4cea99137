"""`autobot ops` with real ansible-runner runs of the stand-in project: two "machines" that are this machine
(connection local), writing only into the project's temporary copy. No inventory's hosts are contacted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.unit.ops_replay import copy_project

from autobot.cli import main
from autobot.ops import commands, session
from autobot.ops.commands import RunOptions
from autobot.ops.progress import Event, RunState
from autobot.ops.pump import Render
from autobot.ops.runner import count_listed_tasks, runner_env

pytestmark = pytest.mark.slow
WAIT = 120.0  # a bound for a run of a few seconds to finish; never a speed assertion


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = copy_project(tmp_path)
    monkeypatch.chdir(project)
    return project


def test_runner_path_starts_with_the_interpreters_own_bin_directory(tmp_path: Path) -> None:
    env = runner_env("/opt/x/.venv/bin/python", {"PATH": "/usr/bin:/bin"}, tmp_path)
    assert env["PATH"] == "/opt/x/.venv/bin:/usr/bin:/bin"
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")
    assert runner_env("/opt/x/bin/python", {}, tmp_path)["PATH"] == "/opt/x/bin"


def test_counting_listed_tasks() -> None:
    listing = (
        "playbook: playbooks/site.yml\n\n"
        "  play #1 (all): Write\tTAGS: []\n    tasks:\n      A\tTAGS: []\n      role : B\tTAGS: [x]\n\n"
        "  play #2 (all): Phase\tTAGS: []\n    tasks:\n      C\tTAGS: []\n"
    )
    assert count_listed_tasks(listing) == 3


def test_a_real_converge_then_a_real_failed_deploy(project: Path) -> None:
    site = CliRunner().invoke(main, ["ops", "site"])
    assert site.exit_code == 0, site.output
    assert (project / "state" / "node-a" / "release").read_text() == "20250101T000000Z-abc1234\n"
    assert "task 4 of ~4" in site.output  # --list-tasks through ansible-runner gave the total
    assert "20250101T000000Z-abc1234" in site.output
    assert "signs main-backend:v2" in site.output

    deploy = CliRunner().invoke(main, ["ops", "deploy"])
    assert deploy.exit_code == 1
    assert (
        'FAILED on node-b, task "Check the new release\'s health": npu-worker did not answer' in deploy.output
    )
    assert (project / "state" / "node-a" / "release").read_text() == "20250102T000000Z-def5678\n"
    assert (project / "state" / "node-b" / "release").read_text() == "20250101T000000Z-abc1234\n"


def test_check_mode_shows_what_would_change_and_changes_nothing(project: Path) -> None:
    result = CliRunner().invoke(main, ["ops", "site", "--check", "-v"])
    assert result.exit_code == 0, result.output
    assert not (project / "state").exists()
    assert "--check --diff" in result.output
    assert "changed: [node-a]" in result.output
    [run] = sorted((project / ".autobot" / "runs").iterdir())
    command = (run / "command").read_text()
    assert '"--check", "--diff"' in command
    assert '"env"' not in command


def test_the_venv_command_works_without_an_activated_venv(project: Path) -> None:
    """`.venv/bin/autobot ops status` with a PATH that does not hold the venv (before: "ansible-playbook not
    found")."""
    autobot = Path(sys.executable).parent / "autobot"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [str(autobot), "ops", "status"], cwd=project, env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not found" not in done.stdout + done.stderr
    assert "node-a" in done.stdout


class StuckDisplay:
    """A display whose first render blocks until the run is over: as slow as a display can be."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.renders_done = 0
        self.renders_done_when_the_run_ended = -1

    def render(self, state: RunState, batch: Sequence[Event]) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        self.renders_done += 1

    @contextmanager
    def __call__(self) -> Iterator[Render]:
        yield self.render


def test_a_stuck_display_does_not_stall_a_real_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    display = StuckDisplay()
    real_run = session.run_playbook

    def run_then_release(*args: Any, **kwargs: Any) -> Any:
        result = real_run(*args, **kwargs)
        display.renders_done_when_the_run_ended = display.renders_done
        display.release.set()
        return result

    monkeypatch.setattr(session, "run_playbook", run_then_release)
    outcome = session.run_action(project, commands.site(), RunOptions(), display, read_health=False)
    assert outcome.result.ok
    assert display.entered.is_set()
    assert display.renders_done_when_the_run_ended == 0  # the whole run went by while the display was stuck
    assert outcome.state.task_number == 4  # and the state still got every event
    assert outcome.state.stats is not None
    assert set(outcome.state.stats) == {"node-a", "node-b"}
