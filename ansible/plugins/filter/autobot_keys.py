"""Filters that turn the controller's secrets into what each machine receives.

They call the deployed package's own functions (autobot.security.*), so derivation exists exactly once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from autobot.security.backup import encrypt_backup
    from autobot.security.distribution import DistributionError, machine_files, machine_key_ids
    from autobot.security.keyring_file import KeyringFileError, dump_keyring, parse_keyring
except ImportError as exc:  # pragma: no cover
    raise AnsibleFilterError(
        "the autobot package is not importable by the controller's Python: run from the toolkit's virtualenv"
    ) from exc


def autobot_key_files(
    secrets: dict[str, Any],
    services: dict[str, Any],
    service_id: str,
    key_dir: str,
    service_group: str,
    admin_user: str,
) -> list[dict[str, str]]:
    """[{path, content, owner, group, mode}]: every file of `key_dir` on the machine running `service_id`
    (service keys and Redis passwords), as `autobot.security.distribution.machine_files` decides them."""
    try:
        files = machine_files(
            secrets, services, service_id, key_dir=key_dir, service_group=service_group, admin_user=admin_user
        )
    except (DistributionError, KeyringFileError) as exc:
        raise AnsibleFilterError(str(exc)) from None
    return [dataclasses.asdict(f) for f in files]


def autobot_key_ids(secrets: dict[str, Any], services: dict[str, Any], service_id: str) -> dict[str, Any]:
    """{signing, verifying}: the key ids the files of the machine running `service_id` hold, as
    `autobot.security.distribution.machine_key_ids` decides them (what its service must report loaded)."""
    try:
        keyring = parse_keyring(secrets.get("keyring"), source="secrets keyring")
        return machine_key_ids(keyring, services, service_id).as_dict()
    except (DistributionError, KeyringFileError) as exc:
        raise AnsibleFilterError(str(exc)) from None


def autobot_redis_logins(
    secrets: dict[str, Any], users: list[str], which: str = "current"
) -> list[dict[str, str]]:
    """[{user, password}] for the redis role's login proof: each user's `current` password, or the `retired`
    one a password rotation keeps in its record until the proof is done (users without one are left out)."""
    if which not in ("current", "retired"):
        raise AnsibleFilterError(f"autobot_redis_logins: which must be current or retired, not {which!r}")
    current = (secrets.get("redis") or {}).get("users") or {}
    records = (secrets.get("rotation") or {}).get("redis") or {}
    logins = []
    for user in users:
        password = (
            current.get(user) if which == "current" else (records.get(user) or {}).get("retired_password")
        )
        if password:
            logins.append({"user": user, "password": password})
        elif which == "current":
            raise AnsibleFilterError(f"autobot_redis_logins: the secrets hold no password for {user!r}")
    return logins


def autobot_keyring_backup(keyring: dict[str, Any], backup_key_hex: str, environment: str) -> str:
    """The AES-GCM blob of the keyring written to Redis (deterministic, so it can be compared)."""
    try:
        text = dump_keyring(parse_keyring(keyring, source="secrets keyring"))
        return encrypt_backup(text.encode("utf-8"), bytes.fromhex(backup_key_hex), environment)
    except (KeyringFileError, ValueError) as exc:
        raise AnsibleFilterError(f"cannot build the keyring backup: {exc}") from None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "autobot_key_files": autobot_key_files,
            "autobot_key_ids": autobot_key_ids,
            "autobot_keyring_backup": autobot_keyring_backup,
            "autobot_redis_logins": autobot_redis_logins,
        }
