"""The run folders: `.autobot/runs/<UTC time>-<command>/` under the checkout, one per run, newest N kept.

Each holds what ansible-runner writes (job_events/, stdout, status, rc, command), the health run that followed
the action (health/), and `autobot-run.json` (the arguments, the outcome and the number of tasks), which the
next identical run reads for its progress total.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

RUNS_DIR = Path(".autobot") / "runs"
DEFAULT_KEEP = 20
RECORD = "autobot-run.json"
# Only folders named like ours are ever rotated: nothing else under .autobot/runs is deleted.
_RUN_NAME = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[a-z0-9-]+")


def run_name(now: datetime, slug: str) -> str:
    """`20250101T120000.123Z-deploy`: UTC, so names sort in time order whatever the operator's zone."""
    stamp = now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{slug}"


def stale_runs(names: Iterable[str], keep: int) -> list[str]:
    """The run folders beyond the newest `keep`, by name (the UTC time), never by mtime (copies change it)."""
    ours = sorted(n for n in names if _RUN_NAME.fullmatch(n))
    return ours[: max(len(ours) - keep, 0)]


def rotate(runs_dir: Path, keep: int) -> list[str]:
    """Delete the run folders beyond the newest `keep`; returns their names."""
    if not runs_dir.is_dir():
        return []
    removed = stale_runs((p.name for p in runs_dir.iterdir() if p.is_dir()), keep)
    for name in removed:
        shutil.rmtree(runs_dir / name, ignore_errors=True)
    return removed


def scrub_command_env(artifact_dir: Path) -> None:
    """ansible-runner writes the whole process environment into `command`; keep only command and cwd.

    The environment may hold an operator's tokens, and run folders are kept: never store them.
    """
    path = artifact_dir / "command"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and "env" in data:
        data.pop("env")
        path.write_text(json.dumps(data), encoding="utf-8")


def task_key(args: Sequence[str]) -> list[str]:
    """The arguments that decide which tasks run (verbosity does not)."""
    return [a for a in args if not re.fullmatch(r"-v+", a)]


def write_record(artifact_dir: Path, args: Sequence[str], status: str, tasks: int) -> None:
    record = {"args": list(args), "status": status, "tasks": tasks}
    (artifact_dir / RECORD).write_text(json.dumps(record), encoding="utf-8")


def previous_task_count(runs_dir: Path, args: Sequence[str]) -> int | None:
    """The tasks the newest successful run with the same arguments started, if there is one."""
    if not runs_dir.is_dir():
        return None
    key = task_key(args)
    for name in sorted((p.name for p in runs_dir.iterdir() if _RUN_NAME.fullmatch(p.name)), reverse=True):
        try:
            record: Any = json.loads((runs_dir / name / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (
            isinstance(record, dict)
            and record.get("status") == "successful"
            and task_key(record.get("args") or []) == key
            and isinstance(record.get("tasks"), int)
        ):
            return int(record["tasks"])
    return None
