"""Key material primitives: master keys, key ids and per-callee pair keys.

Pure and dependency-free on purpose: the Ansible filter plugin imports this module on the controller to derive
the pair keys it ships to each machine, so the derivation exists exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

MASTER_KEY_BYTES = 32  # 256-bit (docs/architecture.md, "Keys")
PAIR_KEY_CONTEXT = b"autobot-pair-v1|"

_SERVICE_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_KEY_ID = re.compile(r"(?P<service>[a-z][a-z0-9-]{0,62}):v(?P<version>[1-9][0-9]{0,8})")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class KeyFormatError(ValueError):
    """A key id or a key's text form is malformed. The message never contains key material."""


def is_service_id(value: str) -> bool:
    return _SERVICE_ID.fullmatch(value) is not None


@dataclass(frozen=True, order=True)
class KeyId:
    """`<service>:v<N>`: names one version of one service's master key (and the pair keys derived from it)."""

    service: str
    version: int

    def __post_init__(self) -> None:
        if not is_service_id(self.service):
            raise KeyFormatError(f"invalid service id in key id: {self.service!r}")
        if not 1 <= self.version <= 999_999_999:
            raise KeyFormatError(f"key version must be between 1 and 999999999, not {self.version}")

    @classmethod
    def parse(cls, text: str) -> KeyId:
        match = _KEY_ID.fullmatch(text)
        if match is None:
            raise KeyFormatError(f"malformed key id {text[:80]!r}: expected '<service>:v<N>'")
        return cls(match["service"], int(match["version"]))

    def __str__(self) -> str:
        return f"{self.service}:v{self.version}"


def generate_master_key() -> bytes:
    return secrets.token_bytes(MASTER_KEY_BYTES)


def derive_pair_key(master: bytes, callee: str) -> bytes:
    """The key a caller signs with towards `callee`: HMAC-SHA256(master, "autobot-pair-v1|" + callee).

    A callee holds only the pair keys derived for itself, so a compromised callee cannot forge its callers'
    requests towards any other service (RFC 9421 section 7.3.3).
    """
    if len(master) != MASTER_KEY_BYTES:
        raise KeyFormatError(f"master key must be {MASTER_KEY_BYTES} bytes, not {len(master)}")
    if not is_service_id(callee):
        raise KeyFormatError(f"invalid callee service id {callee[:80]!r}")
    return hmac.new(master, PAIR_KEY_CONTEXT + callee.encode("ascii"), hashlib.sha256).digest()


def key_to_hex(key: bytes) -> str:
    return key.hex()


def key_from_hex(text: str, *, what: str = "key") -> bytes:
    """Parse 64 lower-case hex characters (one trailing newline allowed); `what` names the source."""
    body = text[:-1] if text.endswith("\n") else text
    if _HEX_KEY.fullmatch(body) is None:
        raise KeyFormatError(
            f"{what} must hold exactly 64 lower-case hex characters (and optionally a newline)"
        )
    return bytes.fromhex(body)


def fingerprint(key: bytes) -> str:
    """A short, one-way tag for telling keys apart in operator output; it reveals nothing usable."""
    return hashlib.sha256(b"autobot-fingerprint-v1|" + key).hexdigest()[:12]
