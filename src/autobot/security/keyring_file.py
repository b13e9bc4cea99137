"""The controller's keyring file: every service's master keys, by version, and where each rotation stands.

Format (plaintext YAML written by `autobot keys generate`; the deployment vault-encrypts it):

    format: autobot-keyring-v2
    services:
      <service-id>:
        current: N            # the version the service signs with
        staged: N+1           # optional: published to verifiers ahead of the switch, not signing yet
        previous: N-1         # optional: no longer signing, accepted until it is retired
        revoked: [M, ...]     # optional: versions taken out by an emergency revocation (never reissued)
        keys: {N: "<64 lower-hex>", ...}   # exactly current, staged and previous

A service has a staged version or a previous one, never both, so verifiers accept at most two versions.
`autobot-keyring-v1` documents (`current` = the highest version, every other key accepted) are still read:
the second highest version becomes `previous` (the only one the v1 distribution shipped besides `current`).

Planning is pure (`plan_keyring` and the rotation steps `stage`, `switch`, `retire`, `revoke`); reading and
the atomic 0600 write are the I/O edges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from autobot.atomic_file import write_atomic
from autobot.security.keys import (
    MASTER_KEY_BYTES,
    KeyFormatError,
    KeyId,
    generate_master_key,
    is_service_id,
    key_from_hex,
)

KEYRING_FORMAT = "autobot-keyring-v2"
KEYRING_FORMAT_V1 = "autobot-keyring-v1"
KEYRING_FILE_MODE = 0o600  # every master key in the clear: the operator only
_VAULT_MARKER = "$ANSIBLE_VAULT"


class KeyringFileError(Exception):
    """The keyring file is unreadable, encrypted or malformed; never carries key material."""


@dataclass(frozen=True)
class ServiceKeys:
    """One service's master keys and where its rotation stands (docs/architecture.md, "Rotation").

    `current` signs. Verifiers accept `accepted`: the current version and, during a rotation, either the
    `staged` next one (published before anyone signs with it) or the `previous` one (kept until no signer
    uses it). `keys` holds exactly those versions; `revoked` versions are never issued again.
    """

    current: int
    keys: Mapping[int, bytes] = field(repr=False)
    staged: int | None = None
    previous: int | None = None
    revoked: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyringFileError(f"current version {self.current} has no key")
        if any(len(k) != MASTER_KEY_BYTES for k in self.keys.values()):
            raise KeyringFileError("master keys must be 32 bytes")
        if self.staged is not None and self.previous is not None:
            raise KeyringFileError(
                f"v{self.staged} is staged while v{self.previous} is still accepted: retire the previous "
                "version before staging the next one"
            )
        if self.staged is not None and self.staged <= self.current:
            raise KeyringFileError(f"staged version {self.staged} must be newer than current {self.current}")
        if self.previous is not None and self.previous >= self.current:
            raise KeyringFileError(
                f"previous version {self.previous} must be older than current {self.current}"
            )
        if set(self.keys) != set(self.accepted):
            raise KeyringFileError(
                f"keys hold versions {sorted(self.keys)}; they must be exactly the current, staged and "
                f"previous versions {sorted(self.accepted)}"
            )
        if set(self.revoked) & set(self.accepted):
            raise KeyringFileError(
                f"a revoked version is still held: {sorted(set(self.revoked) & set(self.keys))}"
            )

    @property
    def accepted(self) -> tuple[int, ...]:
        """The versions verifiers accept, newest first (at most two)."""
        held = {self.current} | {v for v in (self.staged, self.previous) if v is not None}
        return tuple(sorted(held, reverse=True))

    @property
    def next_version(self) -> int:
        """The next version to issue: above every version ever held or revoked."""
        return max((*self.accepted, *self.revoked)) + 1


@dataclass(frozen=True)
class ControllerKeyring:
    services: Mapping[str, ServiceKeys] = field(default_factory=dict)

    def key_ids(self, service: str) -> list[KeyId]:
        return [KeyId(service, v) for v in self.services[service].accepted]

    def entry(self, service: str) -> ServiceKeys:
        entry = self.services.get(service)
        if entry is None:
            raise KeyringFileError(f"the keyring has no keys for {service!r}")
        return entry

    def with_entry(self, service: str, entry: ServiceKeys) -> ControllerKeyring:
        return ControllerKeyring(services={**self.services, service: entry})


@dataclass(frozen=True)
class KeyChange:
    """One line of `autobot keys generate` output: a key id and what happened to it."""

    key_id: KeyId
    action: str  # "new" | "kept" | "rotated" | "retired" | "staged" | "switched to" | "revoked"

    def __str__(self) -> str:
        return f"{self.key_id} {self.action}"


# -- the rotation steps (pure) ---------------------------------------------------------------------------


def stage(entry: ServiceKeys, key: bytes) -> ServiceKeys:
    """Stage the next version: verifiers will accept it, nobody signs with it yet."""
    if entry.staged is not None:
        raise KeyringFileError(f"v{entry.staged} is already staged")
    if entry.previous is not None:
        raise KeyringFileError(
            f"v{entry.previous} is still accepted: retire it before staging the next version"
        )
    version = entry.next_version
    return replace(entry, keys={**entry.keys, version: key}, staged=version)


def switch(entry: ServiceKeys) -> ServiceKeys:
    """Sign with the staged version; the old current one stays accepted as previous."""
    if entry.staged is None:
        raise KeyringFileError(f"no staged version to switch to (current v{entry.current})")
    return replace(entry, current=entry.staged, staged=None, previous=entry.current)


def retire(entry: ServiceKeys) -> ServiceKeys:
    """Stop accepting the previous version (once no signer uses it)."""
    if entry.previous is None:
        raise KeyringFileError(f"no previous version to retire (current v{entry.current})")
    keys = {v: k for v, k in entry.keys.items() if v != entry.previous}
    return replace(entry, keys=keys, previous=None)


def revoke(entry: ServiceKeys, version: int, new_key: Callable[[], bytes]) -> ServiceKeys:
    """Take `version` out at once. If it signs, the staged version (or a new one) becomes current.

    Revoking a version already revoked changes nothing (a rerun after an interruption)."""
    if version in entry.revoked:
        return entry
    if version not in entry.keys:
        accepted = ", ".join(f"v{v}" for v in entry.accepted)
        raise KeyringFileError(f"v{version} is not held (accepted: {accepted}): nothing to revoke")
    revoked = tuple(sorted({*entry.revoked, version}))
    keys = {v: k for v, k in entry.keys.items() if v != version}
    if version == entry.staged:
        return replace(entry, keys=keys, staged=None, revoked=revoked)
    if version == entry.previous:
        return replace(entry, keys=keys, previous=None, revoked=revoked)
    if entry.staged is not None:
        return replace(entry, current=entry.staged, staged=None, keys=keys, revoked=revoked)
    fresh = entry.next_version
    return replace(entry, current=fresh, keys={**keys, fresh: new_key()}, revoked=revoked)


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


def _parse_keys(entry: Mapping[Any, Any], where: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for version, text in entry["keys"].items():
        number = _parse_version(version, where)
        if not isinstance(text, str):
            raise KeyringFileError(f"{where} v{number}: key must be a hex string")
        try:
            keys[number] = key_from_hex(text, what=f"{where} v{number}")
        except KeyFormatError as exc:
            raise KeyringFileError(str(exc)) from exc
    return keys


def _optional_version(entry: Mapping[Any, Any], name: str, where: str) -> int | None:
    value = entry.get(name)
    return None if value is None else _parse_version(value, f"{where} {name}")


def _parse_entry_v1(entry: Mapping[Any, Any], where: str) -> ServiceKeys:
    keys = _parse_keys(entry, where)
    current = _parse_version(entry.get("current"), f"{where} current")
    if current != max(keys, default=0):
        raise KeyringFileError(f"{where}: current ({current}) must be the highest key version")
    # v1 verifiers accepted the two highest versions; older keys were never shipped and are dropped.
    older = sorted((v for v in keys if v != current), reverse=True)
    previous = older[0] if older else None
    kept = {v: keys[v] for v in (current, previous) if v is not None}
    return ServiceKeys(current=current, keys=kept, previous=previous)


def _parse_entry_v2(entry: Mapping[Any, Any], where: str) -> ServiceKeys:
    keys = _parse_keys(entry, where)
    revoked = entry.get("revoked") or []
    if not isinstance(revoked, list):
        raise KeyringFileError(f"{where}: 'revoked' must be a list of versions")
    try:
        return ServiceKeys(
            current=_parse_version(entry.get("current"), f"{where} current"),
            keys=keys,
            staged=_optional_version(entry, "staged", where),
            previous=_optional_version(entry, "previous", where),
            revoked=tuple(sorted({_parse_version(v, f"{where} revoked") for v in revoked})),
        )
    except KeyringFileError as exc:
        raise KeyringFileError(f"{where}: {exc}") from None


def parse_keyring(data: object, *, source: str = "keyring") -> ControllerKeyring:
    """A keyring document (v2, or v1 migrated on the fly) as a ControllerKeyring."""
    formats = (KEYRING_FORMAT, KEYRING_FORMAT_V1)
    if not isinstance(data, Mapping) or data.get("format") not in formats:
        raise KeyringFileError(f"{source}: not an {KEYRING_FORMAT} document (missing or wrong 'format')")
    parse_entry = _parse_entry_v2 if data["format"] == KEYRING_FORMAT else _parse_entry_v1
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
        parsed[service] = parse_entry(entry, where)
    return ControllerKeyring(services=parsed)


def _dump_entry(entry: ServiceKeys) -> dict[str, Any]:
    doc: dict[str, Any] = {"current": entry.current}
    if entry.staged is not None:
        doc["staged"] = entry.staged
    if entry.previous is not None:
        doc["previous"] = entry.previous
    if entry.revoked:
        doc["revoked"] = list(entry.revoked)
    doc["keys"] = {v: entry.keys[v].hex() for v in sorted(entry.keys, reverse=True)}
    return doc


def dump_keyring(keyring: ControllerKeyring) -> str:
    doc: dict[str, Any] = {
        "format": KEYRING_FORMAT,
        "services": {service: _dump_entry(entry) for service, entry in sorted(keyring.services.items())},
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


def _rotate_offline(
    service: str, entry: ServiceKeys, new_key: Callable[[], bytes]
) -> tuple[ServiceKeys, list[KeyChange]]:
    """All rotation steps at once, for a keyring no machine uses yet (`autobot keys generate --rotate`):
    the previous version is retired, the next one staged and switched to; the old current stays previous."""
    changes: list[KeyChange] = []
    if entry.previous is not None:
        changes.append(KeyChange(KeyId(service, entry.previous), "retired"))
        entry = retire(entry)
    if entry.staged is None:
        entry = stage(entry, new_key())
    entry = switch(entry)
    assert entry.previous is not None  # switch() keeps the old current as previous
    changes[:0] = [
        KeyChange(KeyId(service, entry.current), "rotated"),
        KeyChange(KeyId(service, entry.previous), "kept"),
    ]
    return entry, changes


def plan_keyring(
    existing: ControllerKeyring | None,
    services: Iterable[str],
    *,
    rotate: Iterable[str] = (),
    new_key: Callable[[], bytes] = generate_master_key,
) -> tuple[ControllerKeyring, list[KeyChange]]:
    """Existing keys are reused and new services get v1.

    `rotate` runs every rotation step at once (N+1 current, N previous, older retired): only for a keyring
    file no machine uses yet. A running cluster rotates in stages (playbooks/rotate-service-keys.yml), so no
    signer uses a version before every verifier accepts it.

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
        elif service in to_rotate:
            result[service], rotated = _rotate_offline(service, entry, new_key)
            changes.extend(rotated)
        else:
            changes.append(KeyChange(KeyId(service, entry.current), "kept"))
    for service in sorted(set(result) - set(wanted)):
        changes.append(KeyChange(KeyId(service, result[service].current), "kept (not in the matrix)"))
    return ControllerKeyring(services=result), changes
