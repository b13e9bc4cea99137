"""Turn what a machine reports (listening ports, units, health answers) into the health of its services."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def autobot_service_health(
    host_services: Sequence[Mapping[str, Any]],
    open_ports: Sequence[int],
    units: Mapping[str, Mapping[str, Any]],
    answers: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """service id -> listening | down | not deployed.

    - not deployed: the machine has no unit of that name (ansible.builtin.service_facts' `services`);
    - listening: its unit runs, its port accepts connections (`open_ports`) and, if the matrix names a health
      route, it answered 200 (`answers`: service id -> HTTP status, 0 when nothing answered);
    - down: deployed, but one of those is not so.
    `host_services` are dict2items entries of the matrix.
    """
    ports = {int(port) for port in open_ports}
    answers = answers or {}
    health: dict[str, str] = {}
    for service in host_services:
        service_id, spec = service["key"], service["value"]
        unit = units.get(f"{spec['unit']}.service")
        if unit is None or unit.get("status") == "not-found":
            health[service_id] = "not deployed"
            continue
        running = unit.get("state") == "running"
        answered = answers.get(service_id, 200) == 200 if spec.get("health") else True
        health[service_id] = "listening" if running and int(spec["port"]) in ports and answered else "down"
    return health


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"autobot_service_health": autobot_service_health}
