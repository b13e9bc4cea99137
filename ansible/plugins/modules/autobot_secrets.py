#!/usr/bin/python
"""Plan the cluster's secrets on the controller: service master keys, Redis passwords, the backup key."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: autobot_secrets
short_description: Plan the AutoBot cluster secrets from the service matrix
description:
  - Runs on the controller. Takes the current secrets (decrypted from the inventory's vault file) and the
    service matrix, and returns the secrets the cluster needs. Existing keys and passwords are always reused;
    only missing ones are generated, and a rotation is explicit.
  - Reports C(changed) when the returned secrets differ from the current ones; the caller then re-encrypts and
    writes them. Supports check mode (it writes nothing anyway).
  - Needs the C(autobot) package in the controller's Python (the toolkit's virtualenv).
options:
  current:
    description: The secrets as stored (empty for a new environment).
    type: dict
    default: {}
  services:
    description: The service matrix (C(autobot_services)).
    type: dict
    required: true
  rotate_keys:
    description: Services whose master key gets a new version (the previous one stays accepted).
    type: list
    elements: str
    default: []
  rotate_redis:
    description: Redis users that get a new password; the old one is kept under C(previous) until retired.
    type: list
    elements: str
    default: []
  retire_previous_redis:
    description: Forget the previous Redis passwords (after every client uses the new ones).
    type: bool
    default: false
  admin_user:
    description: The Redis ACL user with every right (C(autobot_redis_admin_user)); it gets a password too.
    type: str
    required: true
author: AutoBot cluster toolkit
"""

RETURN = r"""
secrets:
  description: The planned secrets (keyring, redis users and previous passwords, backup key). Secret.
  returned: always
  type: dict
differs:
  description: Whether the planned secrets differ from the current ones (they must be written).
  returned: always
  type: bool
changes:
  description: What happened, without key material (for example C(npu-worker:v2 rotated)).
  returned: always
  type: list
  elements: str
"""

import json
import secrets as _random
from typing import Any

from ansible.module_utils.basic import AnsibleModule

try:
    import yaml

    from autobot.security.keyring_file import (
        KEYRING_FORMAT,
        KeyringFileError,
        dump_keyring,
        parse_keyring,
        plan_keyring,
    )

    HAS_AUTOBOT = True
except ImportError:  # pragma: no cover - reported by the module itself
    HAS_AUTOBOT = False


def _random_secret() -> str:
    return _random.token_hex(32)


def plan(
    current: dict[str, Any],
    services: dict[str, Any],
    rotate_keys: list[str],
    rotate_redis: list[str],
    retire_previous: bool,
    admin_user: str,
) -> tuple[dict[str, Any], list[str]]:
    existing = parse_keyring(current["keyring"], source="secrets keyring") if current.get("keyring") else None
    keyring, key_changes = plan_keyring(existing, sorted(services), rotate=rotate_keys)
    changes = [str(c) for c in key_changes if c.action != "kept"]

    redis_users = [admin_user, *sorted(sid for sid, svc in services.items() if svc.get("redis"))]
    old_redis = dict((current.get("redis") or {}).get("users") or {})
    previous = {} if retire_previous else dict((current.get("redis") or {}).get("previous") or {})
    unknown = sorted(set(rotate_redis) - set(redis_users))
    if unknown:
        raise ValueError(f"cannot rotate Redis passwords of {', '.join(unknown)}: no such Redis user")
    users: dict[str, str] = {}
    for user in redis_users:
        if user in rotate_redis and user in old_redis:
            previous[user] = old_redis[user]
            users[user] = _random_secret()
            changes.append(f"redis user {user} password rotated")
        elif user in old_redis:
            users[user] = old_redis[user]
        else:
            users[user] = _random_secret()
            changes.append(f"redis user {user} password created")
    if retire_previous and (current.get("redis") or {}).get("previous"):
        changes.append("previous redis passwords retired")

    backup_key = current.get("backup_key") or _random_secret()
    if not current.get("backup_key"):
        changes.append("keyring backup key created")
    planned = {
        "keyring": yaml.safe_load(dump_keyring(keyring)),
        "redis": {"users": users, "previous": previous},
        "backup_key": backup_key,
    }
    # Through JSON, as Ansible will return it (integer versions become strings), so it compares equal to
    # what was read back from the vault file.
    normalised: dict[str, Any] = json.loads(json.dumps(planned))
    return normalised, changes


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            # Not no_log here: Ansible would then censor the returned secrets too. The task sets no_log.
            "current": {"type": "dict", "default": {}},
            "services": {"type": "dict", "required": True},
            "rotate_keys": {"type": "list", "elements": "str", "default": []},
            "rotate_redis": {"type": "list", "elements": "str", "default": []},
            "retire_previous_redis": {"type": "bool", "default": False},
            # The Redis ACL user with every right (autobot_redis_admin_user in group_vars/all/services.yml).
            "admin_user": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    if not HAS_AUTOBOT:
        module.fail_json(
            msg="the autobot package is not importable by the controller's Python: run from the "
            "toolkit's virtualenv (make venv)"
        )
    p = module.params
    try:
        planned, changes = plan(
            p["current"] or {},
            p["services"],
            p["rotate_keys"],
            p["rotate_redis"],
            p["retire_previous_redis"],
            p["admin_user"],
        )
    except (KeyringFileError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    changed = bool(changes) or planned != (p["current"] or {})
    # `differs` repeats `changed` so the caller's write step reads as a decision, not a handler in disguise.
    module.exit_json(
        changed=changed, differs=changed, secrets=planned, changes=changes, format=KEYRING_FORMAT
    )


if __name__ == "__main__":
    main()
