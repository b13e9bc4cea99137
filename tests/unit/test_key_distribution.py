"""What each machine receives (autobot.security.distribution) and the Redis keyring backup."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autobot.security.backup import BackupError, decrypt_backup, encrypt_backup
from autobot.security.distribution import DistributionError, machine_key_files
from autobot.security.keyring_file import plan_keyring
from autobot.security.keys import derive_pair_key


@pytest.fixture
def services(services_matrix_file: Path) -> dict[str, dict[str, object]]:
    data = yaml.safe_load(services_matrix_file.read_text(encoding="utf-8"))
    return dict(data["autobot_services"])


def test_each_machine_gets_its_master_and_its_callers_pair_keys(services: dict) -> None:
    keyring, _ = plan_keyring(None, services)
    files = machine_key_files(keyring, services, "npu-worker")
    assert set(files) == {"master.v1.key", "pair.main-backend.v1.key", "pair.ai-stack.v1.key"}
    main_master = keyring.services["main-backend"].keys[1]
    assert files["pair.main-backend.v1.key"] == derive_pair_key(main_master, "npu-worker").hex()
    assert files["master.v1.key"] == keyring.services["npu-worker"].keys[1].hex()


def test_no_machine_receives_a_key_that_signs_towards_another_service(services: dict) -> None:
    keyring, _ = plan_keyring(None, services)
    for callee in services:
        files = machine_key_files(keyring, services, callee)
        for other in services:
            if other == callee:
                continue
            for caller in services:
                master = keyring.services[caller].keys[1]
                assert derive_pair_key(master, other).hex() not in files.values()
                if caller != callee:
                    assert master.hex() not in files.values()


def test_rotation_ships_current_and_previous_but_not_older(services: dict) -> None:
    keyring, _ = plan_keyring(None, services)
    keyring, _ = plan_keyring(keyring, services, rotate=["main-backend"])
    keyring, _ = plan_keyring(keyring, services, rotate=["main-backend"])
    files = machine_key_files(keyring, services, "ai-stack")
    assert {n for n in files if n.startswith("pair.main-backend")} == {
        "pair.main-backend.v3.key",
        "pair.main-backend.v2.key",
    }
    assert {n for n in machine_key_files(keyring, services, "main-backend") if n.startswith("master")} == {
        "master.v3.key",
        "master.v2.key",
    }


def test_a_missing_caller_key_is_a_clear_error(services: dict) -> None:
    keyring, _ = plan_keyring(None, [s for s in services if s != "main-backend"])
    with pytest.raises(DistributionError, match="main-backend"):
        machine_key_files(keyring, services, "npu-worker")
    with pytest.raises(DistributionError, match="not in the matrix"):
        machine_key_files(keyring, services, "nope")


def test_backup_round_trip_is_deterministic_and_bound_to_its_environment() -> None:
    key = bytes(range(32))
    blob = encrypt_backup(b"plain secret", key, "local")
    assert blob == encrypt_backup(b"plain secret", key, "local")
    assert blob != encrypt_backup(b"other text", key, "local")
    assert "plain" not in blob
    assert decrypt_backup(blob, key, "local") == b"plain secret"
    with pytest.raises(BackupError):
        decrypt_backup(blob, key, "production")
    with pytest.raises(BackupError):
        decrypt_backup(blob, bytes(32), "local")
    with pytest.raises(BackupError):
        decrypt_backup("garbage", key, "local")
