"""Helpers for the testinfra checks: the expectations come from the service matrix, never from a copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MATRIX_FILE = REPO / "inventory" / "group_vars" / "all" / "services.yml"


def load_services() -> dict[str, Any]:
    data = yaml.safe_load(MATRIX_FILE.read_text(encoding="utf-8"))
    services: dict[str, Any] = data["autobot_services"]
    return services


@pytest.fixture(scope="session")
def services() -> dict[str, Any]:
    return load_services()


def host_groups(host: Any) -> list[str]:
    """The inventory groups of the host testinfra is checking."""
    groups: list[str] = host.ansible.get_variables().get("group_names", [])
    return groups
