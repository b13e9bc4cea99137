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


def autobot_identity(
    services: Mapping[str, Any],
    service_id: str,
    groups: Mapping[str, Sequence[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The `backend.identity` config section of `service_id`: the identity header its matrix entry declares
    (`identity_header: {name, set_by}`) and, as trusted proxies, the addresses of every host of every service
    in `set_by` (all frontend machines, not only the first: nginx may run on several). Empty without one."""
    spec = (services.get(service_id) or {}).get("identity_header")
    if spec is None:
        return {}
    where = f"{service_id}.identity_header"
    if not isinstance(spec, Mapping) or set(spec) != {"name", "set_by"}:
        raise AnsibleFilterError(f"{where}: expected exactly the keys 'name' and 'set_by'")
    name, set_by = spec["name"], spec["set_by"]
    if not isinstance(name, str) or not name:
        raise AnsibleFilterError(f"{where}.name: expected a header name")
    if not isinstance(set_by, Sequence) or isinstance(set_by, str) or not set_by:
        raise AnsibleFilterError(f"{where}.set_by: expected a non-empty list of service ids")
    proxies: list[str] = []
    for setter in set_by:
        if setter not in services:
            raise AnsibleFilterError(f"{where}.set_by: {setter!r} is not a service of the matrix")
        hosts = list(groups.get(services[setter]["group"], ()))
        if not hosts:
            raise AnsibleFilterError(f"{where}.set_by: group {services[setter]['group']} has no host")
        proxies.extend(str(hostvars[host].get("autobot_address") or host) for host in hosts)
    return {"header": name, "trusted_proxies": list(dict.fromkeys(proxies))}


def _plain(value: Any) -> Any:
    """Ansible's lazy containers as plain dicts and lists. pydantic reads a list subclass through the C
    iteration protocol, which bypasses the lazy templating and hands it unrendered items."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


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
        loaded = ServiceConfig.model_validate(_plain(config))
    except ValidationError as exc:
        return [
            f"{'.'.join(str(part) for part in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        ]
    if loaded.service_id != service_id:
        return [f"service_id: {loaded.service_id!r} is not {service_id!r}"]
    return []


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "autobot_peers": autobot_peers,
            "autobot_identity": autobot_identity,
            "autobot_config_errors": autobot_config_errors,
        }
