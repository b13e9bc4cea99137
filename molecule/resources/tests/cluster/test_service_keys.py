"""Each machine holds exactly the key files the matrix implies, with the right content, owner and mode."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from cluster_secrets import all_secret_strings, load_secrets

from conftest import REPO, host_service

sys.path.insert(0, str(REPO / "src"))
from autobot.security.distribution import machine_files

KEY_DIR = "/etc/autobot/service-keys"


@pytest.fixture(scope="session")
def cluster_secrets() -> dict[str, Any]:
    return load_secrets()


def expected_files(services: dict[str, Any], secrets: dict[str, Any], service_id: str) -> dict[str, str]:
    """Name -> content of every file the machine must hold: what the role installs, decided in one place."""
    files = machine_files(secrets, services, service_id, key_dir=KEY_DIR, service_group="unused")
    return {f.path.rsplit("/", 1)[1]: f.content for f in files}


def test_key_directory_is_closed_to_others(host: Any, layout: dict[str, Any]) -> None:
    d = host.file(KEY_DIR)
    assert d.is_directory
    assert (d.user, d.group, d.mode) == ("root", layout["autobot_service_group"], 0o750)


def test_exactly_the_files_the_matrix_implies(
    host: Any, services: dict[str, Any], cluster_secrets: dict[str, Any]
) -> None:
    service_id = host_service(host, services)
    expected = expected_files(services, cluster_secrets, service_id)
    present = set(host.check_output(f"ls -A {KEY_DIR}").split())
    assert present == set(expected)
    for name, content in expected.items():
        f = host.file(f"{KEY_DIR}/{name}")
        assert f.content_string.strip() == content, f"{name} does not hold the derived key"
        assert f.user == "root"
        assert f.mode & 0o137 == 0, f"{name} is {oct(f.mode)}: must be 0640 or tighter"


def test_a_machine_never_holds_another_services_master_key(host: Any, services: dict[str, Any]) -> None:
    service_id = host_service(host, services)
    names = host.check_output(f"ls -A {KEY_DIR}").split()
    masters = [n for n in names if n.startswith("master.")]
    pairs = {n.split(".")[1] for n in names if n.startswith("pair.")}
    assert masters, "every machine has its own master key"
    assert pairs == set(services[service_id].get("callers") or {})


def test_no_key_material_in_ansible_output(
    cluster_secrets: dict[str, Any], ansible_verbose_converge: str
) -> None:
    """A third converge at -v prints nothing secret (its output is searched for every key and password)."""
    from conftest import recap

    counts = recap(ansible_verbose_converge)
    changed = [line for line in ansible_verbose_converge.splitlines() if line.startswith("changed:")]
    assert counts, ansible_verbose_converge[-2000:]
    assert all(c["changed"] == 0 for c in counts.values()), (counts, changed[:10])
    leaked = [s[:6] + "..." for s in all_secret_strings(cluster_secrets) if s in ansible_verbose_converge]
    assert leaked == []
