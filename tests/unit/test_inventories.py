"""Both inventories: six hosts in the six groups the service matrix names, and nothing repeated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "inventory/group_vars/all/services.yml"


def _ansible_inventory(name: str) -> dict[str, Any]:
    exe = shutil.which("ansible-inventory") or str(Path(sys.executable).parent / "ansible-inventory")
    if not Path(exe).exists():
        pytest.skip("ansible-inventory is not installed (make venv installs it)")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    out = subprocess.run(
        [exe, "-i", f"inventory/{name}", "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _services() -> dict[str, Any]:
    return yaml.safe_load(MATRIX.read_text(encoding="utf-8"))["autobot_services"]


@pytest.mark.parametrize("name", ["production", "local"])
def test_six_hosts_in_the_six_matrix_groups(name: str) -> None:
    inv = _ansible_inventory(name)
    groups = {svc["group"] for svc in _services().values()}
    assert len(groups) == 6
    hosts = set()
    for group in groups:
        members = inv[group]["hosts"]
        assert len(members) == 1, f"{group} must hold exactly one machine"
        hosts.update(members)
    assert len(hosts) == 6


@pytest.mark.parametrize("name", ["production", "local"])
def test_both_inventories_see_the_same_matrix(name: str) -> None:
    hostvars = _ansible_inventory(name)["_meta"]["hostvars"]
    for host, variables in hostvars.items():
        assert variables["autobot_services"] == _services(), host


def test_local_and_production_share_groups_and_host_names() -> None:
    prod, local = _ansible_inventory("production"), _ansible_inventory("local")
    groups = {svc["group"] for svc in _services().values()}
    for group in groups:
        assert prod[group]["hosts"] == local[group]["hosts"], group


def test_group_vars_are_shared_not_copied() -> None:
    for name in ("production", "local"):
        link = ROOT / "inventory" / name / "group_vars"
        assert link.is_symlink()
        assert link.resolve() == (ROOT / "inventory/group_vars").resolve()
