"""Turn what a machine reports of its services (its local fact) into their health."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def autobot_service_health(
    host_services: Sequence[Mapping[str, Any]], observed: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    """service id -> listening | down | not deployed.

    `observed` is the machine's report (roles/common templates/autobot.fact.j2, `services`): per service,
    its unit `loaded` and `active`, `port_open`, and `health_status` (the HTTP status of the matrix's health
    route, 0 when nothing answered, None when the matrix names none).
    - not deployed: the machine has no such unit (or reported nothing for it);
    - listening: the unit runs, the port accepts connections and the health route, if any, answered 200;
    - down: deployed, but one of those is not so.
    `host_services` are dict2items entries of the matrix.
    """
    health: dict[str, str] = {}
    for service in host_services:
        service_id = service["key"]
        seen = observed.get(service_id) or {}
        if not seen.get("loaded"):
            health[service_id] = "not deployed"
            continue
        answered = (
            seen.get("health_status") in (None, 200)
            if not service["value"].get("health")
            else (seen.get("health_status") == 200)
        )
        up = bool(seen.get("active")) and bool(seen.get("port_open")) and answered
        health[service_id] = "listening" if up else "down"
    return health


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"autobot_service_health": autobot_service_health}
