"""Which environment an inventory is, and whether a run against it needs the operator's typed confirmation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PRODUCTION = "production"
LOCAL = "local"


def _hosts_file(inventory: Path) -> Path | None:
    if inventory.is_file():
        return inventory
    for name in ("hosts.yml", "hosts.yaml"):
        if (inventory / name).is_file():
            return inventory / name
    return None


def inventory_env(inventory: Path) -> str | None:
    """`autobot_env` of the inventory's top-level vars (None when it does not say or cannot be read)."""
    hosts = _hosts_file(inventory)
    if hosts is None:
        return None
    try:
        data: Any = yaml.safe_load(hosts.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    try:
        env = data["all"]["vars"]["autobot_env"]
    except (KeyError, TypeError):
        return None
    return str(env) if env else None


def needs_confirmation(inventory: Path, env: str | None) -> bool:
    """Production, by what the inventory says or by where it lives (a copy that forgot to say so counts)."""
    return env == PRODUCTION or inventory.resolve().parts[-2:] == ("inventory", PRODUCTION)
