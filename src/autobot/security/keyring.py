"""The key files of one machine (/etc/autobot/service-keys/), loaded into memory.

Files: `master.v<N>.key` (this service's own master keys; the signer uses the highest version) and
`pair.<caller>.v<N>.key` (pair keys of the callers allowed to call this service; the verifier accepts the two
highest versions of each caller, so rotation is rolling, and refuses older ones). Contents: 64 lower-case hex
characters and an optional newline. Errors name the file, never its content.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autobot.security.keys import (
    MASTER_KEY_BYTES,
    KeyFormatError,
    KeyId,
    derive_pair_key,
    is_service_id,
    key_from_hex,
)

ACCEPTED_VERSIONS = 2  # current and previous
_MASTER_FILE = re.compile(r"master\.v(?P<version>[1-9][0-9]{0,8})\.key")
_PAIR_FILE = re.compile(r"pair\.(?P<caller>[a-z][a-z0-9-]{0,62})\.v(?P<version>[1-9][0-9]{0,8})\.key")
# Key files must be 0640 or tighter (docs/architecture.md, "Key files"): nothing for others, no group write.
_FORBIDDEN_MODE_BITS = 0o137
_MAX_KEY_FILE_BYTES = 4096


class KeyringError(Exception):
    """Key files are missing, unreadable, too open or malformed. Never carries key material."""


def master_file_name(version: int) -> str:
    return f"master.v{version}.key"


def pair_file_name(caller: str, version: int) -> str:
    return f"pair.{caller}.v{version}.key"


@dataclass(frozen=True)
class KeyFile:
    """What `autobot keys inspect` shows about one file: never the key."""

    path: Path
    kind: str  # "master" | "pair"
    key_id: KeyId
    mode: int
    key: bytes = field(repr=False)


def read_key_file(path: Path) -> tuple[bytes, int]:
    """Return (key, mode). Refuses group-writable or other-accessible files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyringError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & _FORBIDDEN_MODE_BITS:
            raise KeyringError(f"key file {path} has mode {mode:04o}; it must be 0640 or tighter")
        raw = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyringError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    try:
        text = raw.decode("ascii")
        key = key_from_hex(text, what=f"key file {path}")
    except (UnicodeDecodeError, KeyFormatError) as exc:
        raise KeyringError(
            f"key file {path} is malformed: it must hold exactly 64 lower-case hex characters "
            "and optionally a newline"
        ) from exc
    return key, mode


def scan_key_dir(path: Path, service_id: str) -> list[KeyFile]:
    """Read every `*.key` file of the directory; unknown `*.key` names are errors, other files are ignored."""
    if not is_service_id(service_id):
        raise KeyringError(f"invalid service id {service_id!r}")
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError as exc:
        raise KeyringError(f"key directory {path} does not exist (were the service keys deployed?)") from exc
    except OSError as exc:
        raise KeyringError(f"cannot list key directory {path}: {exc.strerror or exc}") from exc
    files: list[KeyFile] = []
    for name in names:
        if not name.endswith(".key"):
            continue
        master = _MASTER_FILE.fullmatch(name)
        pair = _PAIR_FILE.fullmatch(name)
        if master is not None:
            kind, key_id = "master", KeyId(service_id, int(master["version"]))
        elif pair is not None:
            kind, key_id = "pair", KeyId(pair["caller"], int(pair["version"]))
        else:
            raise KeyringError(
                f"unexpected key file name {path / name}: expected master.v<N>.key or pair.<caller>.v<N>.key"
            )
        key, mode = read_key_file(path / name)
        files.append(KeyFile(path=path / name, kind=kind, key_id=key_id, mode=mode, key=key))
    return files


def accepted_versions(versions: list[int] | set[int]) -> list[int]:
    """The versions a verifier accepts: the newest two, newest first."""
    return sorted(versions, reverse=True)[:ACCEPTED_VERSIONS]


@dataclass(frozen=True)
class Keyring:
    """Signer side: own master keys by version. Verifier side: accepted pair keys by caller and version."""

    service_id: str
    masters: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    pair_keys: Mapping[str, Mapping[int, bytes]] = field(default_factory=dict, repr=False)
    source: Path | None = None

    def __post_init__(self) -> None:
        if not is_service_id(self.service_id):
            raise KeyringError(f"invalid service id {self.service_id!r}")
        for key in self.masters.values():
            if len(key) != MASTER_KEY_BYTES:
                raise KeyringError("master keys must be 32 bytes")

    @classmethod
    def load_dir(cls, path: Path | str, service_id: str) -> Keyring:
        path = Path(path)
        files = scan_key_dir(path, service_id)
        if not files:
            raise KeyringError(f"key directory {path} holds no key files for {service_id}")
        masters = {f.key_id.version: f.key for f in files if f.kind == "master"}
        by_caller: dict[str, dict[int, bytes]] = {}
        for f in files:
            if f.kind == "pair":
                by_caller.setdefault(f.key_id.service, {})[f.key_id.version] = f.key
        pair_keys = {
            caller: {v: keys[v] for v in accepted_versions(set(keys))} for caller, keys in by_caller.items()
        }
        return cls(service_id=service_id, masters=masters, pair_keys=pair_keys, source=path)

    @property
    def current_version(self) -> int:
        if not self.masters:
            where = f" in {self.source}" if self.source else ""
            raise KeyringError(
                f"no master key for {self.service_id}{where}: this service cannot sign requests"
            )
        return max(self.masters)

    @property
    def signing_key_id(self) -> KeyId:
        return KeyId(self.service_id, self.current_version)

    def signing_key(self, callee: str) -> tuple[KeyId, bytes]:
        """The current key id and the pair key this service signs with towards `callee`."""
        version = self.current_version
        return KeyId(self.service_id, version), derive_pair_key(self.masters[version], callee)

    # Both are asked on every verified request; the keyring never changes after loading, so they are
    # computed once (cached_property writes the instance __dict__, which a frozen dataclass allows).
    @functools.cached_property
    def callers(self) -> frozenset[str]:
        return frozenset(self.pair_keys)

    @functools.cached_property
    def _accepted_pair_keys(self) -> Mapping[tuple[str, int], bytes]:
        return {
            (caller, version): versions[version]
            for caller, versions in self.pair_keys.items()
            for version in accepted_versions(set(versions))
        }

    @functools.cached_property
    def verifying_key_ids(self) -> tuple[str, ...]:
        """The caller key ids this keyring accepts (`main-backend:v2`), sorted: what status reports."""
        return tuple(sorted(str(KeyId(caller, version)) for caller, version in self._accepted_pair_keys))

    def verification_key(self, key_id: KeyId) -> bytes | None:
        """The pair key for a caller's key id if that version is accepted (current or previous), else None."""
        return self._accepted_pair_keys.get((key_id.service, key_id.version))
