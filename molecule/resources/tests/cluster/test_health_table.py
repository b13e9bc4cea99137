"""`autobot ops status` over the scenario's machines: the operator's health table, through ansible-runner."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO, load_services


def test_the_health_table_shows_every_machine_healthy_with_its_release_and_phase() -> None:
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
        assert f"{service_id}: listening" in result.stdout
    assert "not deployed" not in result.stdout
    assert "attention" not in result.stdout
    assert "logging" in result.stdout  # the recorded service-auth phase of the Python services
