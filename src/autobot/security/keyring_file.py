"""The controller's keyring file: every service's master keys, by version.

Format (plaintext YAML written by `autobot keys generate`; the deployment vault-encrypts it):

    format: autobot-keyring-v1
    services:
      <service-id>: {current: N, keys: {N: "<64 lower-hex>", N-1: "<64 lower-hex>"}}

Planning is pure (`plan_keyring`); reading and the atomic 0600 write are the I/O edges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autobot.atomic_file import write_atomic
from autobot.security.keyring import ACCEPTED_VERSIONS
from autobot.security.keys import (
    MASTER_KEY_BYTES,
    KeyFormatError,
    KeyId,
    generate_master_key,
    is_service_id,
    key_from_hex,
)

KEYRING_FORMAT = "autobot-keyring-v1"
KEYRING_FILE_MODE = 0o600  # every master key in the clear: the operator only
_VAULT_MARKER = "$ANSIBLE_VAULT"


class KeyringFileError(Exception):
    """The keyring file is unreadable, encrypted or malformed; never carries key material."""


@dataclass(frozen=True)
class ServiceKeys:
    current: int
    keys: Mapping[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyringFileError(f"current version {self.current} has no key")
        if any(len(k) != MASTER_KEY_BYTES for k in self.keys.values()):
            raise KeyringFileError("master keys must be 32 bytes")


@dataclass(frozen=True)
class ControllerKeyring:
    services: Mapping[str, ServiceKeys] = field(default_factory=dict)

    def key_ids(self, service: str) -> list[KeyId]:
        return [KeyId(service, v) for v in sorted(self.services[service].keys, reverse=True)]


@dataclass(frozen=True)
class KeyChange:
    """One line of `autobot keys generate` output: a key id and what happened to it."""

    key_id: KeyId
    action: str  # "new" | "kept" | "rotated" | "retired"

    def __str__(self) -> str:
        return f"{self.key_id} {self.action}"


def _parse_version(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise KeyringFileError(f"{where}: version must be a positive integer")
    try:
        version = int(value)
    except ValueError as exc:
        raise KeyringFileError(f"{where}: version must be a positive integer") from exc
    if version < 1:
        raise KeyringFileError(f"{where}: version must be a positive integer")
    return version


def parse_keyring(data: object, *, source: str = "keyring") -> ControllerKeyring:
    if not isinstance(data, Mapping) or data.get("format") != KEYRING_FORMAT:
        raise KeyringFileError(f"{source}: not an {KEYRING_FORMAT} document (missing or wrong 'format')")
    services = data.get("services") or {}
    if not isinstance(services, Mapping):
        raise KeyringFileError(f"{source}: 'services' must be a mapping")
    parsed: dict[str, ServiceKeys] = {}
    for service, entry in services.items():
        where = f"{source}: service {service!r}"
        if not isinstance(service, str) or not is_service_id(service):
            raise KeyringFileError(f"{where}: invalid service id")
        if not isinstance(entry, Mapping) or not isinstance(entry.get("keys"), Mapping):
            raise KeyringFileError(f"{where}: expected {{current: N, keys: {{N: hex}}}}")
        keys: dict[int, bytes] = {}
        for version, text in entry["keys"].items():
            number = _parse_version(version, where)
            if not isinstance(text, str):
                raise KeyringFileError(f"{where} v{number}: key must be a hex string")
            try:
                keys[number] = key_from_hex(text, what=f"{where} v{number}")
            except KeyFormatError as exc:
                raise KeyringFileError(str(exc)) from exc
        current = _parse_version(entry.get("current"), f"{where} current")
        if current != max(keys, default=0):
            raise KeyringFileError(f"{where}: current ({current}) must be the highest key version")
        parsed[service] = ServiceKeys(current=current, keys=keys)
    return ControllerKeyring(services=parsed)


def dump_keyring(keyring: ControllerKeyring) -> str:
    doc: dict[str, Any] = {
        "format": KEYRING_FORMAT,
        "services": {
            service: {
                "current": entry.current,
                "keys": {v: entry.keys[v].hex() for v in sorted(entry.keys, reverse=True)},
            }
            for service, entry in sorted(keyring.services.items())
        },
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def read_keyring(path: Path) -> ControllerKeyring:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyringFileError(f"cannot read keyring {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise KeyringFileError(f"keyring {path} is not UTF-8 text") from exc
    if text.lstrip().startswith(_VAULT_MARKER):
        raise KeyringFileError(
            f"keyring {path} is ansible-vault encrypted: decrypt it to a private temporary file first "
            "(ansible-vault decrypt --output ...), then re-encrypt the result"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The YAML error could quote a line of the file, i.e. key material: report only the position.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KeyringFileError(f"keyring {path} is not valid YAML{where}") from None
    return parse_keyring(data, source=str(path))


def write_keyring_atomic(path: Path, keyring: ControllerKeyring) -> None:
    """Write the keyring 0600 with `write_atomic`: readers see the old file or the new one, never half."""
    write_atomic(path, dump_keyring(keyring).encode("utf-8"), KEYRING_FILE_MODE)


def plan_keyring(
    existing: ControllerKeyring | None,
    services: Iterable[str],
    *,
    rotate: Iterable[str] = (),
    new_key: Callable[[], bytes] = generate_master_key,
) -> tuple[ControllerKeyring, list[KeyChange]]:
    """Existing keys are reused, new services get v1, rotated services get N+1 and keep N (older are retired).

    Services present in `existing` but no longer in `services` are kept untouched: dropping keys is never
    implicit.
    """
    wanted = list(dict.fromkeys(services))
    to_rotate = list(dict.fromkeys(rotate))
    for service in [*wanted, *to_rotate]:
        if not is_service_id(service):
            raise KeyringFileError(f"invalid service id {service!r}")
    unknown = [s for s in to_rotate if s not in wanted]
    if unknown:
        raise KeyringFileError(f"cannot rotate {', '.join(unknown)}: not a service of the matrix")
    result: dict[str, ServiceKeys] = dict(existing.services) if existing else {}
    changes: list[KeyChange] = []
    for service in wanted:
        entry = result.get(service)
        if entry is None:
            result[service] = ServiceKeys(current=1, keys={1: new_key()})
            changes.append(KeyChange(KeyId(service, 1), "new"))
            continue
        if service not in to_rotate:
            changes.append(KeyChange(KeyId(service, entry.current), "kept"))
            continue
        version = entry.current + 1
        keep = sorted(entry.keys, reverse=True)[: ACCEPTED_VERSIONS - 1]
        keys = {v: entry.keys[v] for v in keep}
        keys[version] = new_key()
        result[service] = ServiceKeys(current=version, keys=keys)
        changes.append(KeyChange(KeyId(service, version), "rotated"))
        changes.extend(KeyChange(KeyId(service, v), "kept") for v in keep)
        changes.extend(KeyChange(KeyId(service, v), "retired") for v in sorted(entry.keys) if v not in keys)
    for service in sorted(set(result) - set(wanted)):
        changes.append(KeyChange(KeyId(service, result[service].current), "kept (not in the matrix)"))
    return ControllerKeyring(services=result), changes
