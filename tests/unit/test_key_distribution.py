"""What each machine receives (autobot.security.distribution) and the Redis keyring backup."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import filter_loader
from ansible.template import Templar, trust_as_template
from tests.support.secrets import planned_secrets

from autobot.security.backup import BackupError, decrypt_backup, encrypt_backup
from autobot.security.distribution import DistributionError, machine_files, machine_key_files
from autobot.security.keyring_file import plan_keyring
from autobot.security.keys import derive_pair_key

ROOT = Path(__file__).resolve().parents[2]
KEY_DIR = "/etc/autobot/service-keys"


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


def test_verifiers_get_current_and_previous_and_the_signer_only_its_current_master(services: dict) -> None:
    keyring, _ = plan_keyring(None, services)
    keyring, _ = plan_keyring(keyring, services, rotate=["main-backend"])
    keyring, _ = plan_keyring(keyring, services, rotate=["main-backend"])
    files = machine_key_files(keyring, services, "ai-stack")
    assert {n for n in files if n.startswith("pair.main-backend")} == {
        "pair.main-backend.v3.key",
        "pair.main-backend.v2.key",
    }
    assert {n for n in machine_key_files(keyring, services, "main-backend") if n.startswith("master")} == {
        "master.v3.key"
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


def _secrets(services: dict[str, Any]) -> dict[str, Any]:
    """Secrets shaped as the autobot_secrets module plans them (passwords made up, keys generated)."""
    return planned_secrets(services)


def test_machine_files_hold_the_keys_and_the_redis_passwords_with_their_owners_and_modes(
    services: dict,
) -> None:
    secrets = _secrets(services)
    for service_id, entry in services.items():
        files = machine_files(secrets, services, service_id, key_dir=KEY_DIR, service_group="autobot")
        by_name = {f.path.removeprefix(KEY_DIR + "/"): f for f in files}
        keys = machine_key_files(plan_keyring(None, services)[0], services, service_id)
        expected = {*keys, "versions.json"}
        if entry.get("redis"):
            expected.add("redis.password")
            assert by_name["redis.password"].content == f"password-of-{service_id}"
        if entry["kind"] == "redis":
            expected.add("redis-admin.password")
            admin = by_name["redis-admin.password"]
            assert (admin.content, admin.owner, admin.group, admin.mode) == (
                "password-of-admin",
                "root",
                "root",
                "0600",
            )
        assert set(by_name) == expected, service_id
        assert [f.path for f in files] == sorted(f.path for f in files)
        for name, f in by_name.items():
            if name != "redis-admin.password":
                assert (f.owner, f.group, f.mode) == ("root", "autobot", "0640"), name
            assert "password-of" not in repr(f)  # contents stay out of reprs and logs


def test_a_missing_redis_password_is_a_clear_error_that_names_no_secret(services: dict) -> None:
    secrets = _secrets(services)
    del secrets["redis"]["users"]["npu-worker"]
    with pytest.raises(DistributionError, match="no Redis password for ACL user 'npu-worker'") as caught:
        machine_files(secrets, services, "npu-worker", key_dir=KEY_DIR, service_group="autobot")
    assert "password-of" not in str(caught.value)


def _role_tasks() -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = yaml.safe_load((ROOT / "roles/service_keys/tasks/main.yml").read_text())
    return tasks


def test_the_role_installs_exactly_what_machine_files_decides(services: dict) -> None:
    """The role's Jinja only passes values through: templated by Ansible with the project's filter plugin,
    its list is machine_files' own, and the install task takes every attribute from it."""
    filter_loader.add_directory(str(ROOT / "ansible/plugins/filter"))
    collect, install = (
        _role_tasks()[0],
        next(t for t in _role_tasks() if "autobot_key_files" in t),
    )
    expression = collect["ansible.builtin.set_fact"]["service_keys_files"]
    secrets = _secrets(services)
    # The admin user's name travels from group_vars (autobot_redis_admin_user) through the role to Python.
    secrets["redis"]["users"]["root-of-redis"] = "password-of-root-of-redis"
    for service_id in services:
        variables = {
            "hostvars": {"localhost": {"service_keys_secrets": secrets}},
            "autobot_services": services,
            "autobot_service_id": service_id,
            "service_keys_dir": KEY_DIR,
            "autobot_service_group": "autobot-svc",
            "autobot_redis_admin_user": "root-of-redis",
        }
        rendered = Templar(loader=DataLoader(), variables=variables).template(trust_as_template(expression))
        decided = machine_files(
            secrets,
            services,
            service_id,
            key_dir=KEY_DIR,
            service_group="autobot-svc",
            admin_user="root-of-redis",
        )
        assert rendered == [dataclasses.asdict(f) for f in decided]
    # The install passes the decided list through untouched (the module writes path, owner, group, mode).
    assert install["autobot_key_files"]["files"] == "{{ service_keys_files }}"
