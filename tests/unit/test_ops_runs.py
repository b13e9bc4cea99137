"""Run folders: named by UTC time, rotated to the newest N by name, stripped of the environment."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from autobot.ops.runs import (
    previous_task_count,
    rotate,
    run_name,
    scrub_command_env,
    stale_runs,
    write_record,
)


def test_run_names_sort_in_time_order() -> None:
    early = run_name(datetime(2025, 1, 2, 3, 4, 5, 6000, tzinfo=UTC), "deploy")
    late = run_name(datetime(2025, 1, 2, 3, 4, 5, 7000, tzinfo=UTC), "a")
    assert early == "20250102T030405.006Z-deploy"
    assert sorted([late, early]) == [early, late]


def test_stale_runs_are_the_oldest_beyond_keep_and_only_ours() -> None:
    names = [f"2025010{d}T000000.000Z-site" for d in range(1, 6)] + ["notes", "20250101-other"]
    assert stale_runs(names, keep=2) == [f"2025010{d}T000000.000Z-site" for d in (1, 2, 3)]
    assert stale_runs(names, keep=10) == []


def test_rotation_keeps_the_newest_by_name_even_when_mtimes_disagree(tmp_path: Path) -> None:
    names = [f"2025010{d}T000000.000Z-deploy" for d in range(1, 5)]
    for i, name in enumerate(names):
        (tmp_path / name / "job_events").mkdir(parents=True)
        # the oldest run was touched last (a copy, a restore): mtime would pick wrong
        os.utime(tmp_path / name, (1_000_000 - i, 1_000_000 - i))
    (tmp_path / "keep-me").mkdir()
    assert rotate(tmp_path, keep=2) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*names[2:], "keep-me"]
    assert rotate(tmp_path / "absent", keep=2) == []


def test_the_environment_is_not_kept_in_the_run_folder(tmp_path: Path) -> None:
    (tmp_path / "command").write_text(
        json.dumps({"command": ["ansible-playbook"], "cwd": "/x", "env": {"API_TOKEN": "s3cret"}}),
        encoding="utf-8",
    )
    scrub_command_env(tmp_path)
    text = (tmp_path / "command").read_text(encoding="utf-8")
    assert "s3cret" not in text
    assert json.loads(text) == {"command": ["ansible-playbook"], "cwd": "/x"}
    scrub_command_env(tmp_path / "missing")  # nothing to do, no error


def test_the_task_total_comes_from_the_newest_successful_identical_run(tmp_path: Path) -> None:
    args = ["-i", "inventory/local", "playbooks/site.yml"]
    for name, run_args, status, tasks in [
        ("20250101T000000.000Z-site", args, "successful", 40),
        ("20250102T000000.000Z-site", args, "successful", 42),
        ("20250103T000000.000Z-site", args, "failed", 7),  # stopped early: its count says nothing
        ("20250104T000000.000Z-site", [*args, "--limit", "x"], "successful", 5),
    ]:
        (tmp_path / name).mkdir()
        write_record(tmp_path / name, run_args, status, tasks)
    assert previous_task_count(tmp_path, args) == 42
    assert previous_task_count(tmp_path, [*args, "-vv"]) == 42  # verbosity runs the same tasks
    assert previous_task_count(tmp_path, [*args, "--check", "--diff"]) is None
    assert previous_task_count(tmp_path / "absent", args) is None
