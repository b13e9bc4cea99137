"""Read the scenario's vault-encrypted secrets on the controller, to check what the machines received."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from ansible.constants import DEFAULT_VAULT_ID_MATCH
from ansible.parsing.vault import VaultLib, VaultSecret

from conftest import REPO

SCENARIO_KEYS = REPO / "keys" / os.environ.get("AUTOBOT_TEST_KEYS_ENV", "molecule")


def load_secrets(store: Path = SCENARIO_KEYS) -> dict[str, Any]:
    password = (store / "vault-password").read_bytes().strip()
    vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(password))])
    data: dict[str, Any] = yaml.safe_load(vault.decrypt((store / "secrets.vault.yml").read_bytes()))
    return data


def all_secret_strings(secrets: dict[str, Any]) -> list[str]:
    """Every secret value, in the forms a leak would take (hex keys, passwords)."""
    values = [secrets["backup_key"]]
    for service in secrets["keyring"]["services"].values():
        values.extend(service["keys"].values())
    values.extend(secrets["redis"]["users"].values())
    values.extend(secrets["redis"].get("previous", {}).values())
    return values
