"""ansible-runner at the edge: run one playbook of the checkout, or list its tasks.

Both run `ansible-playbook` of the Python running this CLI. `.venv/bin/autobot` is often started without an
activated venv, where `ansible-playbook` is not on PATH ("ansible-playbook not found"): the directory of
`sys.executable` goes first on the runner's PATH. It is not resolved through symlinks on purpose: a venv's
`bin/python` links to the system Python, whose directory has no ansible-playbook.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autobot.ops.runs import scrub_command_env


@dataclass(frozen=True)
class RunResult:
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    artifact_dir: Path

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0


def runner_env(executable: str, environ: Mapping[str, str], project: Path) -> dict[str, str]:
    """PATH with the interpreter's own bin directory first, and the checkout's ansible.cfg."""
    bindir = os.path.dirname(executable)
    path = environ.get("PATH", "")
    return {
        "PATH": os.pathsep.join(p for p in (bindir, path) if p),
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
    }


def run_playbook(
    project: Path,
    playbook: str,
    args: Sequence[str],
    artifact_root: Path,
    ident: str,
    event_handler: Callable[[dict[str, Any]], bool] | None = None,
) -> RunResult:
    """Run `ansible-playbook <args> <playbook>` in the checkout; artifacts go to `artifact_root/ident/`.

    Quiet: the caller shows progress from the events (and ansible's own lines with -v).
    """
    import ansible_runner  # deferred: importing it costs time the other `autobot` commands should not pay

    artifact_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autobot-ops-") as private_dir:
        runner = ansible_runner.run(
            private_data_dir=private_dir,
            project_dir=str(project),
            playbook=playbook,
            cmdline=shlex.join(args),
            envvars=runner_env(sys.executable, os.environ, project),
            artifact_dir=str(artifact_root),
            ident=ident,
            quiet=True,
            suppress_env_files=True,
            event_handler=event_handler,
        )
    artifact_dir = artifact_root / ident
    scrub_command_env(artifact_dir)
    return RunResult(
        status=str(runner.status),
        rc=int(runner.rc if runner.rc is not None else -1),
        artifact_dir=artifact_dir,
    )


def count_listed_tasks(listing: str) -> int:
    """Tasks in `ansible-playbook --list-tasks` output (the play headers carry TAGS too: skip them)."""
    return sum(
        1 for line in listing.splitlines() if "TAGS: [" in line and not line.strip().startswith("play #")
    )


def list_tasks(project: Path, playbook: str, args: Sequence[str]) -> int | None:
    """The number of tasks `--list-tasks` lists, or None when it cannot tell (it then shows no total)."""
    import ansible_runner

    with tempfile.TemporaryDirectory(prefix="autobot-ops-") as private_dir:
        out, _err, rc = ansible_runner.run_command(
            executable_cmd="ansible-playbook",
            cmdline_args=[*args, playbook, "--list-tasks"],
            private_data_dir=private_dir,
            host_cwd=str(project),
            envvars=runner_env(sys.executable, os.environ, project),
            quiet=True,
        )
    return count_listed_tasks(str(out)) if rc == 0 else None
