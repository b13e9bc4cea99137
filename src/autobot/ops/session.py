"""One operator run: the playbook with live progress, its run folder, then the health of every machine.

The CLI (autobot/cli/ops.py) parses and prints; this module sequences the parts, each replaceable in tests
(the display, the clock).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autobot.ops.commands import PlaybookCall, RunOptions, playbook_args, status
from autobot.ops.health import MachineHealth, machines_from_events
from autobot.ops.progress import RunState
from autobot.ops.pump import EventPump, Render
from autobot.ops.runner import RunResult, list_tasks, run_playbook
from autobot.ops.runs import DEFAULT_KEEP, RUNS_DIR, previous_task_count, rotate, run_name, write_record

DisplayFactory = Callable[[], AbstractContextManager[Render]]
HEALTH_FOLDER = "health"


@dataclass
class Outcome:
    call: PlaybookCall
    state: RunState
    result: RunResult
    # The health report read after the action (None: not read, e.g. for status itself or a cluster that is
    # down).
    machines: list[MachineHealth] | None = None
    health_error: str = ""
    render_error: str = ""
    removed_runs: list[str] = field(default_factory=list)

    @property
    def all_unreachable(self) -> bool:
        hosts = set(self.state.hosts)
        return bool(hosts) and hosts == {f.host for f in self.state.failures if f.unreachable}


def runner_args(call: PlaybookCall, options: RunOptions) -> list[str]:
    """playbook_args without the playbook itself (ansible-runner appends it)."""
    args = playbook_args(call, options)
    args.remove(call.playbook)
    return args


def load_events(artifact_dir: Path) -> list[dict[str, Any]]:
    """The events ansible-runner stored for a run, in order."""
    folder = artifact_dir / "job_events"
    if not folder.is_dir():
        return []
    numbered = []
    for path in folder.glob("*.json"):
        counter = path.name.split("-", 1)[0]
        if counter.isdigit():
            numbered.append((int(counter), path))
    events = []
    for _, path in sorted(numbered):
        try:
            events.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return events


def _task_total(project: Path, call: PlaybookCall, options: RunOptions, state: RunState) -> None:
    # The total comes from the newest successful run with the same arguments when there is one: free, and
    # exact (it counts what really ran: dynamic includes, one pass per `serial` batch). Otherwise from
    # `ansible-playbook --list-tasks` through ansible-runner: about 0.5 s (measured on site.yml here), no
    # connection to any machine, but blind to includes and batches, so it is shown as an estimate ("~").
    previous = previous_task_count(project / RUNS_DIR, playbook_args(call, options))
    if previous is not None:
        state.task_total, state.task_total_exact = previous, True
    else:
        state.task_total = list_tasks(project, call.playbook, runner_args(call, options))


def run_action(
    project: Path,
    call: PlaybookCall,
    options: RunOptions,
    display: DisplayFactory,
    *,
    keep: int = DEFAULT_KEEP,
    read_health: bool = True,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Outcome:
    runs_dir = project / RUNS_DIR
    state = RunState()
    _task_total(project, call, options, state)
    ident = run_name(now(), call.slug)
    with display() as render, EventPump(state, render) as pump:
        result = run_playbook(
            project, call.playbook, runner_args(call, options), runs_dir, ident, pump.handler
        )
    write_record(result.artifact_dir, playbook_args(call, options), result.status, state.task_number)
    outcome = Outcome(call, state, result, removed_runs=rotate(runs_dir, keep))
    if pump.render_error is not None:
        outcome.render_error = str(pump.render_error)
    if read_health and not outcome.all_unreachable:
        outcome.machines, outcome.health_error = health_after(project, options, result.artifact_dir)
    return outcome


def health_after(
    project: Path, options: RunOptions, artifact_dir: Path
) -> tuple[list[MachineHealth] | None, str]:
    """Run playbooks/health.yml on the same machines (never in check mode) and fold its report."""
    call = status()
    health_options = RunOptions(
        inventory=options.inventory, extra_vars=options.extra_vars, limit=options.limit
    )
    result = run_playbook(
        project, call.playbook, runner_args(call, health_options), artifact_dir, HEALTH_FOLDER
    )
    machines = machines_from_events(load_events(result.artifact_dir))
    if not machines:
        return (
            None,
            f"the health playbook reported nothing (status {result.status}); see {result.artifact_dir}",
        )
    return machines, ""


def stdout_tail(artifact_dir: Path, lines: int = 15) -> str:
    """The end of ansible-playbook's own output, for a run that failed before any task (syntax, vars)."""
    try:
        text = (artifact_dir / "stdout").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
