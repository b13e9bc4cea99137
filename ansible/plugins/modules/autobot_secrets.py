#!/usr/bin/python
"""Plan the cluster's secrets on the controller: service master keys, Redis passwords, the backup key, and
the steps of a rotation (recorded in the secrets themselves)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: autobot_secrets
short_description: Plan the AutoBot cluster secrets from the service matrix, or move a rotation one step on
description:
  - Runs on the controller. Takes the current secrets (decrypted from the inventory's vault file) and the
    service matrix, and returns the secrets the cluster needs. Existing keys and passwords are always reused;
    only missing ones are generated (I(step=generate)).
  - The other steps move a rotation on, as C(autobot.security.rotation) defines them, and record where it
    stands in the returned secrets (C(rotation.keys), C(rotation.redis)), so the vault file holds the record
    together with the keys it describes. A step only moves what is at its starting stage, so running it again
    changes nothing.
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
  admin_user:
    description: The Redis ACL user with every right (C(autobot_redis_admin_user)); it gets a password too.
    type: str
    required: true
  step:
    description:
      - C(generate) creates what is missing. C(keys-begin) stages the next version of each of I(targets) that
        has no rotation under way; C(keys-published), C(keys-switch), C(keys-switched), C(keys-retire) and
        C(keys-done) move the service key rotations on; C(keys-revoke) takes I(revoke) out at once.
      - C(redis-begin) gives each of I(targets) (Redis ACL users) a new password and keeps the old one;
        C(redis-added), C(redis-switched), C(redis-remove) and C(redis-done) move those rotations on.
    type: str
    default: generate
    choices: [generate, keys-begin, keys-published, keys-switch, keys-switched, keys-retire, keys-done,
              keys-revoke, redis-begin, redis-added, redis-switched, redis-remove, redis-done]
  targets:
    description: The services (key steps) or Redis ACL users (redis steps) the step applies to.
    type: list
    elements: str
    default: []
  revoke:
    description: The key id to revoke (C(<service>:v<N>)), for I(step=keys-revoke).
    type: str
    default: ""
author: AutoBot cluster toolkit
"""

RETURN = r"""
secrets:
  description: The planned secrets (keyring, redis users, previous passwords and generations, backup key,
    rotation records). Secret.
  returned: always
  type: dict
differs:
  description: Whether the planned secrets differ from the current ones (they must be written).
  returned: always
  type: bool
changes:
  description: What happened, without key material (for example C(npu-worker:v1 -> npu-worker:v2 planned)).
  returned: always
  type: list
  elements: str
stages:
  description: For a rotation step, target -> the stage it is recorded at afterwards (C(none) without one).
  returned: always
  type: dict
"""

import json
import secrets as _random
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.basic import AnsibleModule

try:
    import yaml

    from autobot.security.keyring_file import KeyringFileError, dump_keyring, parse_keyring, plan_keyring
    from autobot.security.keys import generate_master_key
    from autobot.security.rotation import (
        RotationError,
        key_begin,
        key_revoke,
        key_step,
        redis_begin,
        redis_step,
        stages,
    )

    HAS_AUTOBOT = True
except ImportError:  # pragma: no cover - reported by the module itself
    HAS_AUTOBOT = False


def _random_secret() -> str:
    return _random.token_hex(32)


def plan(
    current: dict[str, Any], services: dict[str, Any], admin_user: str
) -> tuple[dict[str, Any], list[str]]:
    """Reuse every existing key and password, create what is missing; keep rotation records and counts."""
    existing = parse_keyring(current["keyring"], source="secrets keyring") if current.get("keyring") else None
    keyring, key_changes = plan_keyring(existing, sorted(services))
    changes = [str(c) for c in key_changes if c.action != "kept"]

    redis_users = [admin_user, *sorted(sid for sid, svc in services.items() if svc.get("redis"))]
    stored = current.get("redis") or {}
    old_redis = dict(stored.get("users") or {})
    users: dict[str, str] = {}
    for user in redis_users:
        if user in old_redis:
            users[user] = old_redis[user]
        else:
            users[user] = _random_secret()
            changes.append(f"redis user {user} password created")

    backup_key = current.get("backup_key") or _random_secret()
    if not current.get("backup_key"):
        changes.append("keyring backup key created")
    planned: dict[str, Any] = {
        "keyring": yaml.safe_load(dump_keyring(keyring)),
        "redis": {
            "users": users,
            "previous": dict(stored.get("previous") or {}),
            "generation": dict(stored.get("generation") or {}),
        },
        "backup_key": backup_key,
    }
    if current.get("rotation"):
        planned["rotation"] = current["rotation"]
    # Through JSON, as Ansible will return it (integer versions become strings), so it compares equal to
    # what was read back from the vault file.
    normalised: dict[str, Any] = json.loads(json.dumps(planned))
    return normalised, changes


def run_step(
    step: str, current: dict[str, Any], targets: list[str], revoke: str, now: str
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """One rotation step (autobot.security.rotation) on the stored secrets."""
    if step == "keys-begin":
        result = key_begin(current, targets, now=now, new_key=generate_master_key)
    elif step == "keys-revoke":
        result = key_revoke(current, revoke, now=now, new_key=generate_master_key)
        targets = [revoke.split(":", 1)[0]]
    elif step.startswith("keys-"):
        result = key_step(current, targets, step.removeprefix("keys-"), now=now)
    elif step == "redis-begin":
        result = redis_begin(current, targets, now=now, new_password=_random_secret)
    else:
        result = redis_step(current, targets, step.removeprefix("redis-"), now=now)
    kind = "keys" if step.startswith("keys-") else "redis"
    return result.secrets, result.changes, stages(result.secrets, kind, targets)


def main() -> None:
    steps = ["generate", "keys-begin", "keys-published", "keys-switch", "keys-switched", "keys-retire",
             "keys-done", "keys-revoke", "redis-begin", "redis-added", "redis-switched", "redis-remove",
             "redis-done"]  # fmt: skip
    module = AnsibleModule(
        argument_spec={
            # Not no_log here: Ansible would then censor the returned secrets too. The task sets no_log.
            "current": {"type": "dict", "default": {}},
            "services": {"type": "dict", "required": True},
            # The Redis ACL user with every right (autobot_redis_admin_user in group_vars/all/services.yml).
            "admin_user": {"type": "str", "required": True},
            "step": {"type": "str", "default": "generate", "choices": steps},
            "targets": {"type": "list", "elements": "str", "default": []},
            "revoke": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    if not HAS_AUTOBOT:
        module.fail_json(
            msg="the autobot package is not importable by the controller's Python: run from the "
            "toolkit's virtualenv (make venv)"
        )
    p = module.params
    current = p["current"] or {}
    step_stages: dict[str, str] = {}
    try:
        if p["step"] == "generate":
            planned, changes = plan(current, p["services"], p["admin_user"])
        else:
            unknown = sorted(set(p["targets"]) - set(p["services"]) - {p["admin_user"]})
            if unknown:
                raise RotationError(f"{', '.join(unknown)}: not a service of the matrix")
            now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            planned, changes, step_stages = run_step(p["step"], current, p["targets"], p["revoke"], now)
    except (KeyringFileError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    differs = planned != current
    # `differs` repeats `changed` so the caller's write step reads as a decision, not a handler in disguise.
    module.exit_json(changed=differs, differs=differs, secrets=planned, changes=changes, stages=step_stages)


if __name__ == "__main__":
    main()
