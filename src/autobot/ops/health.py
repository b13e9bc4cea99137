"""Run playbooks/health.yml through ansible-runner and turn its per-host report into a table."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

REPORT_TASK = "Report machine health"


@dataclass(frozen=True)
class MachineHealth:
    host: str
    reached: bool
    group: str = ""
    systemd: str = "unknown"
    base_dirs_ok: bool = False
    services: Mapping[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def healthy(self) -> bool:
        return (
            self.reached
            and self.systemd == "running"
            and self.base_dirs_ok
            # A service that is not deployed yet is not a fault; one that is deployed must listen.
            and all(state != "down" for state in self.services.values())
        )


def machines_from_events(events: Iterable[Mapping[str, Any]]) -> list[MachineHealth]:
    """Fold ansible-runner events into one MachineHealth per host (pure, so it is tested without Ansible)."""
    reports: dict[str, MachineHealth] = {}
    for event in events:
        data = event.get("event_data") or {}
        host = data.get("host")
        if not host:
            continue
        kind = event.get("event")
        if kind == "runner_on_unreachable":
            msg = str((data.get("res") or {}).get("msg", "unreachable"))
            reports[host] = MachineHealth(host=host, reached=False, error=msg.splitlines()[0][:120])
        elif kind == "runner_on_failed" and host not in reports:
            msg = str((data.get("res") or {}).get("msg", "failed"))
            reports[host] = MachineHealth(host=host, reached=True, error=msg.splitlines()[0][:120])
        elif kind == "runner_on_ok" and data.get("task") == REPORT_TASK:
            report = (data.get("res") or {}).get("autobot_health") or {}
            reports[host] = MachineHealth(
                host=host,
                reached=True,
                group=str(report.get("group", "")),
                systemd=str(report.get("systemd", "unknown")),
                base_dirs_ok=bool(report.get("base_dirs_ok", False)),
                services={str(k): str(v) for k, v in (report.get("services") or {}).items()},
            )
    return [reports[h] for h in sorted(reports)]


def health_table(machines: Iterable[MachineHealth], title: str) -> Table:
    table = Table(title=title)
    for column in ("machine", "group", "reached", "systemd", "base dirs", "services", "state"):
        table.add_column(column)
    for m in machines:
        services = ", ".join(f"{name}: {state}" for name, state in m.services.items()) or "-"
        table.add_row(
            m.host,
            m.group or "-",
            "yes" if m.reached else "no",
            m.systemd,
            "ok" if m.base_dirs_ok else "missing",
            services if m.reached else m.error,
            "[green]healthy[/]" if m.healthy else "[red]attention[/]",
        )
    return table


class HealthRunError(RuntimeError):
    """The health playbook itself could not run (not a machine being unhealthy)."""


def run_health(project_dir: Path, inventory: Path) -> list[MachineHealth]:
    """Run the health playbook quietly (it changes nothing) and return one report per machine."""
    import ansible_runner  # deferred: only the controller has ansible-runner installed

    with tempfile.TemporaryDirectory(prefix="autobot-health-") as private_dir:
        runner = ansible_runner.run(
            private_data_dir=private_dir,
            project_dir=str(project_dir),
            playbook=str(project_dir / "playbooks" / "health.yml"),
            inventory=str(inventory.resolve()),
            envvars={"ANSIBLE_CONFIG": str(project_dir / "ansible.cfg")},
            quiet=True,
        )
        machines = machines_from_events(runner.events)
        if not machines:
            tail = "\n".join(runner.stdout.read().splitlines()[-15:])
            raise HealthRunError(f"the health playbook did not run (status {runner.status}):\n{tail}")
        return machines
