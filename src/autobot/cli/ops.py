"""`autobot ops`: operator commands on the controller (they drive Ansible through ansible-runner)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from autobot.ops.health import HealthRunError, health_table, run_health


def _project_dir() -> Path:
    """The checkout the operator runs from: the nearest parent holding ansible.cfg and playbooks/."""
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "ansible.cfg").is_file() and (candidate / "playbooks").is_dir():
            return candidate
    raise click.ClickException(
        "run this from the toolkit checkout (no ansible.cfg + playbooks/ found above here)"
    )


@click.group()
def ops() -> None:
    """Operate a cluster from the controller."""


@ops.command()
@click.option(
    "-i",
    "--inventory",
    "inventory",
    type=click.Path(exists=True, path_type=Path),
    default=Path("inventory/local"),
    show_default=True,
    help="Inventory of the cluster to check.",
)
def status(inventory: Path) -> None:
    """Print a health table of every machine; exit 1 unless all are healthy."""
    project = _project_dir()
    try:
        machines = run_health(project, inventory)
    except HealthRunError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()
    if console.width < 120:  # pipes and CI report 80 columns: keep host names and states readable
        console = Console(width=120)
    console.print(health_table(machines, title=f"AutoBot cluster health ({inventory})"))
    if not machines or not all(m.healthy for m in machines):
        sys.exit(1)
