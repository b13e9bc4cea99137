"""The disaster-recovery copy of the keyring kept in Redis: AES-256-GCM, readable only with the backup key.

The nonce is synthetic (HMAC of the plaintext), so the same keyring always encrypts to the same blob: the
deployment can compare before writing and stay idempotent, and a nonce is never reused for two plaintexts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "autobot-keyring-backup-v1:"
_NONCE_BYTES = 12


class BackupError(ValueError):
    """The blob is malformed, for another environment, or the key is wrong. Never carries key material."""


def _aad(environment: str) -> bytes:
    return f"autobot-keyring-backup-v1|{environment}".encode()


def _check_key(key: bytes) -> None:
    if len(key) != 32:
        raise BackupError("the backup key must be 32 bytes")


def encrypt_backup(plaintext: bytes, key: bytes, environment: str) -> str:
    _check_key(key)
    nonce = hmac.new(key, b"nonce|" + plaintext, hashlib.sha256).digest()[:_NONCE_BYTES]
    sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(environment))
    return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_backup(blob: str, key: bytes, environment: str) -> bytes:
    _check_key(key)
    if not blob.startswith(PREFIX):
        raise BackupError("not an autobot keyring backup")
    try:
        raw = base64.b64decode(blob[len(PREFIX) :], validate=True)
    except ValueError as exc:
        raise BackupError("the backup is not valid base64") from exc
    try:
        return AESGCM(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(environment))
    except InvalidTag as exc:
        raise BackupError("the backup does not decrypt with this key for this environment") from exc
