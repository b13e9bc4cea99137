"""The controller's secrets as the autobot_secrets module plans them (keys generated, passwords made up), for
tests of what the machines receive and of the rotation steps."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from autobot.security.keyring_file import dump_keyring, plan_keyring
from autobot.security.keys import generate_master_key


def matrix_services(matrix_file: Path) -> dict[str, Any]:
    data = yaml.safe_load(matrix_file.read_text(encoding="utf-8"))
    return dict(data["autobot_services"])


def planned_secrets(
    services: Mapping[str, Any], new_key: Callable[[], bytes] = generate_master_key, admin_user: str = "admin"
) -> dict[str, Any]:
    """{keyring, redis: {users, previous}, backup_key} with the password of user U being `password-of-U`,
    normalised through JSON as Ansible hands it over (versions become strings)."""
    keyring, _ = plan_keyring(None, services, new_key=new_key)
    users = [admin_user, *(sid for sid, svc in services.items() if svc.get("redis"))]
    doc = {
        "keyring": yaml.safe_load(dump_keyring(keyring)),
        "redis": {"users": {user: f"password-of-{user}" for user in users}, "previous": {}},
        "backup_key": "00" * 32,
    }
    result: dict[str, Any] = json.loads(json.dumps(doc))
    return result
