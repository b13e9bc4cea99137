"""Recorded ansible-runner event streams, and a replay that stands in for ansible-runner in CLI tests.

The streams under tests/fixtures/ops/streams/ are real: tests/fixtures/ops/record.py ran the stand-in project
through ansible-runner on this machine (connection local) and saved every event. `ReplayRunner` is a named
replay, not a simulation: it hands those exact events to the CLI's event handler, in order, and writes the
artifacts ansible-runner would have written, so the CLI is tested end to end without starting Ansible.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from autobot.ops.runner import RunResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ops"
STREAMS = FIXTURES / "streams"
PROJECT = FIXTURES / "project"


def load_stream(name: str) -> list[dict[str, Any]]:
    lines = (STREAMS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project)
    return project


class ReplayRunner:
    """Replaces `run_playbook`: replays the stream recorded for each playbook (playbook -> stream name)."""

    def __init__(self, streams: Mapping[str, str]) -> None:
        self.streams = dict(streams)
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(
        self,
        project: Path,
        playbook: str,
        args: list[str],
        artifact_root: Path,
        ident: str,
        event_handler: Callable[[dict[str, Any]], bool] | None = None,
    ) -> RunResult:
        self.calls.append((playbook, list(args)))
        events = load_stream(self.streams[playbook])
        artifact = artifact_root / ident
        (artifact / "job_events").mkdir(parents=True)
        for event in events:
            if event_handler is None or event_handler(event):
                name = f"{event['counter']}-{event['uuid']}.json"
                (artifact / "job_events" / name).write_text(json.dumps(event), encoding="utf-8")
        stats = next((e["event_data"] for e in events if e["event"] == "playbook_on_stats"), {})
        rc = 4 if stats.get("dark") else 2 if stats.get("failures") else 0
        status = "successful" if rc == 0 else "failed"
        (artifact / "stdout").write_text("\n".join(e.get("stdout", "") for e in events), encoding="utf-8")
        (artifact / "status").write_text(status, encoding="utf-8")
        (artifact / "rc").write_text(str(rc), encoding="utf-8")
        return RunResult(status=status, rc=rc, artifact_dir=artifact)


def install_replay(
    monkeypatch: pytest.MonkeyPatch, streams: Mapping[str, str], total: int | None = 4
) -> ReplayRunner:
    """Make the CLI's runs replay `streams`; `--list-tasks` answers `total`."""
    replay = ReplayRunner(streams)
    monkeypatch.setattr("autobot.ops.session.run_playbook", replay)
    monkeypatch.setattr("autobot.ops.session.list_tasks", lambda *_args: total)
    return replay
