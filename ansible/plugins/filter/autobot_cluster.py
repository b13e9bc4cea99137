"""Cluster facts derived from the service matrix and the inventory, and the services' config check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError


def autobot_peers(
    services: Mapping[str, Any],
    service_id: str,
    groups: Mapping[str, Sequence[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """callee -> base URL, for each Python service whose matrix lets `service_id` call one of its routes.

    The URL names the first host of the callee's group, at the address other machines reach it by
    (`autobot_address`): the cluster runs one host per callee group.
    """
    peers: dict[str, str] = {}
    for callee, spec in sorted(services.items()):
        if spec.get("kind") != "python" or service_id not in (spec.get("callers") or {}):
            continue
        hosts = list(groups.get(spec["group"], ()))
        if not hosts:
            raise AnsibleFilterError(f"{service_id} may call {callee}, but group {spec['group']} has no host")
        address = hostvars[hosts[0]].get("autobot_address") or hosts[0]
        peers[callee] = f"http://{address}:{spec['port']}"
    return peers


def autobot_config_errors(config: Mapping[str, Any], service_id: str) -> list[str]:
    """Why the service would refuse this config (empty: it accepts it), judged by the model it loads."""
    try:
        from pydantic import ValidationError

        from autobot.config import ServiceConfig
    except ImportError as exc:  # pragma: no cover - the controller runs from the toolkit's virtualenv
        raise AnsibleFilterError(
            f"the autobot package is not importable on the controller ({exc}): make venv"
        ) from exc
    try:
        loaded = ServiceConfig.model_validate(dict(config))
    except ValidationError as exc:
        return [
            f"{'.'.join(str(part) for part in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        ]
    if loaded.service_id != service_id:
        return [f"service_id: {loaded.service_id!r} is not {service_id!r}"]
    return []


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"autobot_peers": autobot_peers, "autobot_config_errors": autobot_config_errors}
