"""Which secret files each machine receives, derived from the controller's secrets and the service matrix.

A machine gets its own master key of the version it signs with (`current`, only that one: a signer signs with
the highest master it holds) and, for each caller the matrix lets call it, the pair keys derived for it from
every version of that caller's master key that verifiers accept (current, and during a rotation the staged
next one or the previous one). So a staged version reaches every verifier before any signer holds it, and a
previous version leaves the signers before it leaves the verifiers (docs/architecture.md, "Rotation").
Nothing else: a compromised machine cannot sign as its callers towards any other service. A service with a
`redis:` section also gets its Redis ACL password, and the Redis machine the admin password (root only).
`versions.json` says, without any material, which key versions and Redis password generation the files hold
(the machine's status fact reads it).

`machine_files` decides every file of the key directory (path, content, owner, group, mode); the role
service_keys only installs what it returns (through the `autobot_key_files` filter) and removes the rest.
Pure, so the Ansible filter plugin and the tests use this one function.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autobot.security.keyring import master_file_name, pair_file_name
from autobot.security.keyring_file import ControllerKeyring, ServiceKeys, parse_keyring
from autobot.security.keys import KeyId, derive_pair_key

# The service user reads its files through its group; the Redis admin's credential is root's alone.
OWNER = "root"
GROUP_READABLE_MODE = "0640"
ROOT_ONLY_MODE = "0600"
REDIS_USER_FILE = "redis.password"
REDIS_ADMIN_FILE = "redis-admin.password"
VERSIONS_FILE = "versions.json"


class DistributionError(ValueError):
    """The keyring and the matrix disagree (e.g. a caller without keys); never carries key material."""


@dataclass(frozen=True)
class MachineFile:
    """One file of a machine's key directory, as it must be installed. `mode` is Ansible's octal string."""

    path: str
    content: str = field(repr=False)
    owner: str
    group: str
    mode: str


def callers_of(services: Mapping[str, Any], callee: str) -> list[str]:
    entry = services.get(callee)
    if not isinstance(entry, Mapping):
        raise DistributionError(f"service {callee!r} is not in the matrix")
    return sorted((entry.get("callers") or {}).keys())


def _machine_keys(
    keyring: ControllerKeyring, services: Mapping[str, Any], service_id: str
) -> tuple[ServiceKeys, list[tuple[str, ServiceKeys]]]:
    """The service's own keys and those of every caller the matrix lets call it (clear errors if missing)."""
    callers = callers_of(services, service_id)
    own = keyring.services.get(service_id)
    if own is None:
        raise DistributionError(f"the keyring has no keys for {service_id!r}: generate keys first")
    theirs: list[tuple[str, ServiceKeys]] = []
    for caller in callers:
        entry = keyring.services.get(caller)
        if entry is None:
            raise DistributionError(f"{caller!r} may call {service_id!r} but the keyring has no keys for it")
        theirs.append((caller, entry))
    return own, theirs


def machine_key_files(
    keyring: ControllerKeyring, services: Mapping[str, Any], service_id: str
) -> dict[str, str]:
    """File name -> 64-hex content for /etc/autobot/service-keys/ on the machine running `service_id`."""
    own, callers = _machine_keys(keyring, services, service_id)
    files = {master_file_name(own.current): own.keys[own.current].hex()}
    for caller, theirs in callers:
        for version in theirs.accepted:
            files[pair_file_name(caller, version)] = derive_pair_key(theirs.keys[version], service_id).hex()
    return dict(sorted(files.items()))


@dataclass(frozen=True)
class MachineKeyIds:
    """The key ids a machine's files imply (what its service loads at start), never the keys."""

    signing: str
    verifying: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"signing": self.signing, "verifying": list(self.verifying)}


def machine_key_ids(
    keyring: ControllerKeyring, services: Mapping[str, Any], service_id: str
) -> MachineKeyIds:
    """The version the machine running `service_id` signs with and the caller versions it accepts."""
    own, callers = _machine_keys(keyring, services, service_id)
    verifying = sorted(str(KeyId(caller, v)) for caller, theirs in callers for v in theirs.accepted)
    return MachineKeyIds(signing=str(KeyId(service_id, own.current)), verifying=tuple(verifying))


def redis_generation(secrets: Mapping[str, Any], user: str) -> int:
    """How many passwords the Redis ACL user has had (1 until its first rotation)."""
    generations = (secrets.get("redis") or {}).get("generation") or {}
    value = generations.get(user, 1) if isinstance(generations, Mapping) else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistributionError(f"the Redis password generation of {user!r} must be a positive integer")
    return value


def _redis_password(secrets: Mapping[str, Any], user: str) -> str:
    users = (secrets.get("redis") or {}).get("users") or {}
    password = users.get(user) if isinstance(users, Mapping) else None
    if not isinstance(password, str) or not password:
        raise DistributionError(
            f"the secrets hold no Redis password for ACL user {user!r}: generate secrets first"
        )
    return password


def machine_files(
    secrets: Mapping[str, Any],
    services: Mapping[str, Any],
    service_id: str,
    *,
    key_dir: str,
    service_group: str,
    admin_user: str = "admin",
) -> list[MachineFile]:
    """Every file of `key_dir` on the machine running `service_id`, sorted by path.

    `secrets` is what `autobot_secrets` plans: `keyring` (the controller keyring document) and `redis.users`
    (ACL user -> password). Key files and the service's Redis password are root:`service_group` 0640; the
    Redis admin password (on the machine of kind `redis` only) is root:root 0600. `versions.json` (no
    material) names the key versions and the Redis password generation the other files hold.
    """
    keyring = parse_keyring(secrets.get("keyring"), source="secrets keyring")
    group_readable = {"owner": OWNER, "group": service_group, "mode": GROUP_READABLE_MODE}
    contents = machine_key_files(keyring, services, service_id)
    entry = services[service_id]  # known to be in the matrix: machine_key_files checked it
    generation: int | None = None
    if entry.get("redis") is not None:
        contents[REDIS_USER_FILE] = _redis_password(secrets, service_id)
        generation = redis_generation(secrets, service_id)
    elif entry.get("kind") == "redis":
        generation = redis_generation(secrets, admin_user)
    versions = {
        "service": service_id,
        **machine_key_ids(keyring, services, service_id).as_dict(),
        "redis_password_generation": generation,
    }
    contents[VERSIONS_FILE] = json.dumps(versions, sort_keys=True)
    files = [MachineFile(f"{key_dir}/{name}", text, **group_readable) for name, text in contents.items()]
    if entry.get("kind") == "redis":
        files.append(
            MachineFile(
                f"{key_dir}/{REDIS_ADMIN_FILE}",
                _redis_password(secrets, admin_user),
                owner=OWNER,
                group=OWNER,
                mode=ROOT_ONLY_MODE,
            )
        )
    return sorted(files, key=lambda f: f.path)
