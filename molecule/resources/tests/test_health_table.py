"""`autobot ops status` over the scenario's machines: the operator's health table, through ansible-runner."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO, load_services


def test_the_health_table_lists_every_machine_and_redis_listens() -> None:
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.skip("needs Molecule's inventory (run through molecule verify)")
    result = subprocess.run(
        ["autobot", "ops", "status", "-i", f"{ephemeral}/inventory"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for service_id in load_services():
        assert f"autobot-{service_id}" in result.stdout
    assert "redis-stack: listening" in result.stdout
    assert "attention" not in result.stdout
