"""The health report of playbooks/health.yml, folded from ansible-runner events into one record per machine.

The report contract: one task per host whose result holds `autobot_health` (group, systemd, base_dirs_ok,
services, and, once the deploy, phase and rotation playbooks record them, release, phase, keys and
redis_password_generation). The report is found by that variable, never by the task's display name, so
renaming the task cannot blank the table. Fields a machine does not report yet (or reports in an unexpected
shape) are shown as unknown, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

REPORT_VAR = "autobot_health"


@dataclass(frozen=True)
class Release:
    id: str
    commit: str = ""
    built_at: str = ""


@dataclass(frozen=True)
class KeyVersions:
    """Key versions only (`main-backend:v2`): the report never carries key material."""

    signing: str = ""
    verifying: tuple[str, ...] = ()


@dataclass(frozen=True)
class MachineHealth:
    host: str
    reached: bool
    group: str = ""
    systemd: str = "unknown"
    base_dirs_ok: bool = False
    services: Mapping[str, str] = field(default_factory=dict)
    release: Release | None = None
    phase: str | None = None
    keys: KeyVersions | None = None
    redis_password_generation: int | None = None
    error: str = ""

    @property
    def healthy(self) -> bool:
        return (
            self.reached
            and self.systemd == "running"
            and self.base_dirs_ok
            # site.yml deploys every service of the matrix: one the machine's group runs must listen
            # ("not deployed" is a fault now, as "down" is).
            and all(state == "listening" for state in self.services.values())
        )


def _release(value: object) -> Release | None:
    if not isinstance(value, Mapping) or not value.get("id"):
        return None
    return Release(
        id=str(value["id"]), commit=str(value.get("commit") or ""), built_at=str(value.get("built_at") or "")
    )


def _keys(value: object) -> KeyVersions | None:
    if not isinstance(value, Mapping):
        return None
    verifying = value.get("verifying")
    return KeyVersions(
        signing=str(value.get("signing") or ""),
        verifying=tuple(str(v) for v in verifying) if isinstance(verifying, list | tuple) else (),
    )


def _generation(value: object) -> int | None:
    if isinstance(value, bool):  # bool is an int: a True here is a malformed report, not generation 1
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def machine_from_report(host: str, report: Mapping[str, Any]) -> MachineHealth:
    """One machine's record from its `autobot_health` mapping (missing or odd fields become unknown)."""
    services = report.get("services")
    phase = report.get("phase")
    return MachineHealth(
        host=host,
        reached=True,
        group=str(report.get("group") or ""),
        systemd=str(report.get("systemd") or "unknown"),
        base_dirs_ok=report.get("base_dirs_ok") is True or str(report.get("base_dirs_ok")).lower() == "true",
        services={str(k): str(v) for k, v in services.items()} if isinstance(services, Mapping) else {},
        release=_release(report.get("release")),
        phase=str(phase) if phase not in (None, "") else None,
        keys=_keys(report.get("keys")),
        redis_password_generation=_generation(report.get("redis_password_generation")),
    )


def _first_line(message: object, fallback: str) -> str:
    lines = str(message or "").strip().splitlines()
    return lines[0][:160] if lines else fallback


def machines_from_events(events: Iterable[Mapping[str, Any]]) -> list[MachineHealth]:
    """Fold ansible-runner events into one MachineHealth per host (pure, so it is tested without Ansible)."""
    reports: dict[str, MachineHealth] = {}
    for event in events:
        data = event.get("event_data") or {}
        host = data.get("host")
        if not host:
            continue
        kind = event.get("event")
        res = data.get("res") or {}
        if kind == "runner_on_unreachable":
            reports[host] = MachineHealth(
                host=host, reached=False, error=_first_line(res.get("msg"), "unreachable")
            )
        elif kind == "runner_on_failed" and host not in reports and not data.get("ignore_errors"):
            reports[host] = MachineHealth(
                host=host, reached=True, error=_first_line(res.get("msg"), "failed")
            )
        elif kind == "runner_on_ok" and isinstance(res.get(REPORT_VAR), Mapping):
            reports[host] = machine_from_report(host, res[REPORT_VAR])
    return [reports[h] for h in sorted(reports)]


def release_text(release: Release | None) -> str:
    if release is None:
        return "-"
    return (
        f"{release.id} ({release.commit})"
        if release.commit and release.commit not in release.id
        else release.id
    )


def keys_text(keys: KeyVersions | None) -> str:
    if keys is None:
        return "-"
    parts = [f"signs {keys.signing}"] if keys.signing else []
    if keys.verifying:
        parts.append("verifies " + ", ".join(keys.verifying))
    return "; ".join(parts) or "-"


def health_table(machines: Iterable[MachineHealth], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "machine",
        "group",
        "reached",
        "systemd",
        "base dirs",
        "release",
        "phase",
        "services",
        "state",
    ):
        # ids are read and copied whole (a release id goes into `rollback services --release`): never cut them
        table.add_column(column, no_wrap=column in ("machine", "release", "phase", "state"))
    for m in machines:
        services = ", ".join(f"{name}: {state}" for name, state in m.services.items()) or "-"
        table.add_row(
            m.host,
            m.group or "-",
            "yes" if m.reached else "no",
            m.systemd,
            "ok" if m.base_dirs_ok else "missing",
            release_text(m.release),
            m.phase or "-",
            services if m.reached and not m.error else m.error,
            "[green]healthy[/]" if m.healthy else "[red]attention[/]",
        )
    return table


def keys_table(machines: Iterable[MachineHealth], title: str) -> Table:
    """Per machine, the key versions its files hold and its Redis password generation (never material):
    what a rotation changes, so an operator can follow one."""
    table = Table(title=title)
    for column in ("machine", "signs with", "accepts", "redis password"):
        table.add_column(column, no_wrap=column in ("machine", "signs with"))
    for m in machines:
        if not m.reached:
            continue
        table.add_row(
            m.host,
            (m.keys.signing or "-") if m.keys else "-",
            ", ".join(m.keys.verifying) if m.keys and m.keys.verifying else "-",
            "-" if m.redis_password_generation is None else f"generation {m.redis_password_generation}",
        )
    return table
