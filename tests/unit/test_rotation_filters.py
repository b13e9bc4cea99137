"""The filters the rotation playbooks use on the controller: the key ids a machine must report loaded, and
the logins the Redis proof tries. Loaded from their plugin file, as Ansible loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from tests.support.ansible_plugins import load_filter_plugin
from tests.support.secrets import matrix_services, planned_secrets

from autobot.security.rotation import key_begin, redis_begin, redis_step

keys_filters = load_filter_plugin("autobot_keys.py", "autobot_keys_filters")
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def services(services_matrix_file: Path) -> dict[str, Any]:
    return matrix_services(services_matrix_file)


@pytest.fixture
def secrets(services: dict[str, Any]) -> dict[str, Any]:
    return planned_secrets(services)


def test_key_ids_name_what_a_machine_signs_with_and_accepts(
    secrets: dict[str, Any], services: dict[str, Any]
) -> None:
    planned = key_begin(secrets, ["main-backend"], now=NOW, new_key=lambda: b"\x01" * 32).secrets
    assert keys_filters.autobot_key_ids(planned, services, "npu-worker") == {
        "signing": "npu-worker:v1",
        "verifying": ["ai-stack:v1", "main-backend:v1", "main-backend:v2"],
    }
    # The signer of a staged version still signs with its current one.
    assert keys_filters.autobot_key_ids(planned, services, "main-backend") == {
        "signing": "main-backend:v1",
        "verifying": [],
    }
    with pytest.raises(AnsibleFilterError, match="not in the matrix"):
        keys_filters.autobot_key_ids(planned, services, "nope")


def test_redis_logins_give_current_and_retired_passwords(secrets: dict[str, Any]) -> None:
    walked = redis_begin(secrets, ["npu-worker", "ai-stack"], now=NOW, new_password=lambda: "new").secrets
    for step in ("added", "switched", "remove"):
        walked = redis_step(walked, ["npu-worker", "ai-stack"], step, now=NOW).secrets
    assert keys_filters.autobot_redis_logins(walked, ["npu-worker"]) == [
        {"user": "npu-worker", "password": "new"}
    ]
    assert keys_filters.autobot_redis_logins(
        walked, ["npu-worker", "ai-stack", "main-backend"], "retired"
    ) == [
        {"user": "npu-worker", "password": "password-of-npu-worker"},
        {"user": "ai-stack", "password": "password-of-ai-stack"},
    ]
    with pytest.raises(AnsibleFilterError, match="no password for 'ghost'"):
        keys_filters.autobot_redis_logins(walked, ["ghost"])
    with pytest.raises(AnsibleFilterError, match="current or retired"):
        keys_filters.autobot_redis_logins(walked, ["npu-worker"], "old")
