"""Keys: pair-key derivation, key ids, key files on a machine (Keyring.load_dir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from tests.security.auth_support import controller_keyring, write_key_dir

from autobot.security.keyring import Keyring, KeyringError
from autobot.security.keys import (
    KeyFormatError,
    KeyId,
    derive_pair_key,
    fingerprint,
    generate_master_key,
    key_from_hex,
)

MASTER = bytes(range(32))


def test_pair_key_matches_an_independent_hmac_implementation() -> None:
    mac = HMAC(MASTER, hashes.SHA256())
    mac.update(b"autobot-pair-v1|npu-worker")
    assert derive_pair_key(MASTER, "npu-worker") == mac.finalize()


def test_pair_keys_differ_per_callee_and_master() -> None:
    assert derive_pair_key(MASTER, "npu-worker") != derive_pair_key(MASTER, "ai-stack")
    assert derive_pair_key(MASTER, "npu-worker") != derive_pair_key(bytes(32), "npu-worker")


@pytest.mark.parametrize(("master", "callee"), [(b"short", "npu-worker"), (MASTER, "Bad Id"), (MASTER, "")])
def test_pair_key_refuses_bad_input(master: bytes, callee: str) -> None:
    with pytest.raises(KeyFormatError):
        derive_pair_key(master, callee)


def test_master_keys_are_256_bit_and_random() -> None:
    keys = {generate_master_key() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(k) == 32 for k in keys)


def test_key_id_round_trip_and_order() -> None:
    key_id = KeyId.parse("main-backend:v12")
    assert (key_id.service, key_id.version) == ("main-backend", 12)
    assert str(key_id) == "main-backend:v12"
    assert KeyId("a", 2) > KeyId("a", 1)


@pytest.mark.parametrize(
    "text", ["main-backend", "main-backend:v0", "main-backend:v01", "Main:v1", ":v1", "a:v1 "]
)
def test_malformed_key_ids_are_refused(text: str) -> None:
    with pytest.raises(KeyFormatError):
        KeyId.parse(text)


def test_key_hex_format_is_strict() -> None:
    assert key_from_hex("ab" * 32 + "\n") == bytes([0xAB]) * 32
    for bad in ["AB" * 32, "ab" * 31, "ab" * 32 + "\n\n", " " + "ab" * 32, "zz" * 32]:
        with pytest.raises(KeyFormatError) as info:
            key_from_hex(bad)
        assert bad.strip() not in str(info.value)


def test_fingerprint_is_short_and_reveals_no_key() -> None:
    fp = fingerprint(MASTER)
    assert len(fp) == 12
    assert fp not in MASTER.hex()


# -- Keyring.load_dir ---------------------------------------------------------------------------------------


def test_load_dir_as_deployed(tmp_path: Path) -> None:
    ring = controller_keyring()
    keys = Keyring.load_dir(write_key_dir(tmp_path / "npu", "npu-worker", ring), "npu-worker")
    assert keys.callers == {"main-backend", "ai-stack"}
    assert str(keys.signing_key_id) == "npu-worker:v1"
    main_master = ring.services["main-backend"].keys[1]
    assert keys.verification_key(KeyId("main-backend", 1)) == derive_pair_key(main_master, "npu-worker")
    assert keys.verification_key(KeyId("browser-service", 1)) is None


def test_signer_uses_highest_master_and_verifier_accepts_current_and_previous(tmp_path: Path) -> None:
    ring = controller_keyring()
    ring = controller_keyring(rotate=("main-backend",), base=ring)  # v2, keeps v1
    key_dir = write_key_dir(tmp_path / "npu", "npu-worker", ring)
    # v3 written by hand on top, so v1 becomes older than previous (still present as a file).
    ring3 = controller_keyring(rotate=("main-backend",), base=ring)
    (key_dir / "pair.main-backend.v3.key").write_text(
        derive_pair_key(ring3.services["main-backend"].keys[3], "npu-worker").hex()
    )
    os.chmod(key_dir / "pair.main-backend.v3.key", 0o600)
    npu = Keyring.load_dir(key_dir, "npu-worker")
    assert npu.verification_key(KeyId("main-backend", 3)) is not None
    assert npu.verification_key(KeyId("main-backend", 2)) is not None
    assert npu.verification_key(KeyId("main-backend", 1)) is None

    main = Keyring.load_dir(write_key_dir(tmp_path / "main", "main-backend", ring), "main-backend")
    key_id, key = main.signing_key("npu-worker")
    assert str(key_id) == "main-backend:v2"
    assert key == derive_pair_key(ring.services["main-backend"].keys[2], "npu-worker")


def test_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.load_dir(tmp_path / "nope", "npu-worker")


def test_empty_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="no key files"):
        Keyring.load_dir(tmp_path, "npu-worker")


@pytest.mark.parametrize(
    "content", ["AB" * 32, "ab" * 31, "ab" * 32 + "\nextra", "ab" * 32 + "  ", "secret-passphrase-in-clear"]
)
def test_malformed_key_file_never_echoes_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / "master.v1.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError) as info:
        Keyring.load_dir(tmp_path, "npu-worker")
    assert str(path) in str(info.value)
    assert content.strip() not in str(info.value)
    assert "ab" * 8 not in str(info.value)


def test_too_open_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.v1.key"
    path.write_text("ab" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError, match="0644"):
        Keyring.load_dir(tmp_path, "npu-worker")


def test_unexpected_key_file_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pair.main-backend.key"
    path.write_text("ab" * 32)
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="unexpected key file name"):
        Keyring.load_dir(tmp_path, "npu-worker")


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "master.v1.key").mkdir()  # unreadable as a key file, even for root
    with pytest.raises(KeyringError, match=r"master\.v1\.key"):
        Keyring.load_dir(tmp_path, "npu-worker")


def test_verifier_only_keyring_cannot_sign(tmp_path: Path) -> None:
    path = tmp_path / "pair.main-backend.v1.key"
    path.write_text("cd" * 32)
    os.chmod(path, 0o600)
    keys = Keyring.load_dir(tmp_path, "npu-worker")
    with pytest.raises(KeyringError, match="no master key"):
        keys.signing_key("ai-stack")
