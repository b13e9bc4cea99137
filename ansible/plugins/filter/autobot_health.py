"""Turn what a machine reports (listening ports, unit states) into the health of its services."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# `ss -Hltn`: State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
_LOCAL_PORT = re.compile(r"^\S+\s+\S+\s+\S+\s+\S*:(\d+)\s")


def listening_ports(ss_lines: Sequence[str]) -> set[int]:
    return {int(m.group(1)) for line in ss_lines if (m := _LOCAL_PORT.match(line))}


def autobot_service_health(
    host_services: Sequence[Mapping[str, Any]], ss_lines: Sequence[str], unit_states: Sequence[str]
) -> dict[str, str]:
    """service id -> listening | down (deployed, i.e. its unit is enabled, but not listening) | not deployed.

    `host_services` are dict2items entries of the matrix; `unit_states` are `systemctl is-enabled` answers in
    the same order.
    """
    ports = listening_ports(ss_lines)
    health: dict[str, str] = {}
    for service, state in zip(host_services, list(unit_states) + [""] * len(host_services), strict=False):
        if int(service["value"]["port"]) in ports:
            health[service["key"]] = "listening"
        elif state.strip() == "enabled":
            health[service["key"]] = "down"
        else:
            health[service["key"]] = "not deployed"
    return health


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"autobot_service_health": autobot_service_health}
