"""Guards that keep every test and `make up` away from the production machines."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ADDR = re.compile(r"172\.16\.168\.\d+")
ALLOWED_PRODUCTION_USES = ("--graph", "--list-hosts", "--syntax-check")


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def _is_test_or_automation(path: Path) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return rel in ("Makefile", ".ci/run") or rel.startswith(("tests/", "molecule/"))


def test_no_test_or_make_target_uses_the_production_inventory() -> None:
    offenders = []
    for path in filter(_is_test_or_automation, _tracked_files()):
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if "inventory/production" in line and not any(u in line for u in ALLOWED_PRODUCTION_USES):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_production_addresses_appear_only_in_the_production_inventory_and_docs() -> None:
    offenders = []
    for path in _tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if (
            rel.startswith(("inventory/production/", "docs/"))
            or rel.endswith(".md")
            or path == Path(__file__)
        ):
            continue
        if PRODUCTION_ADDR.search(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(rel)
    assert offenders == []


def test_every_local_host_is_a_container_reached_on_a_loopback_port() -> None:
    """inventory/local reaches each container by SSH on a loopback port Docker publishes, nothing else."""
    inventory = yaml.safe_load((ROOT / "inventory/local/hosts.yml").read_text(encoding="utf-8"))
    top = inventory["all"]["vars"]
    assert top["autobot_env"] == "local"
    assert top["ansible_host"] == "127.0.0.1"
    assert "ansible_connection" not in top, "the local cluster is reached by SSH, as production is"
    ports = []
    for group in inventory["all"]["children"].values():
        for name, hostvars in group["hosts"].items():
            assert not {"ansible_host", "ansible_connection"} & set(hostvars), (
                f"{name} must not override them"
            )
            assert not PRODUCTION_ADDR.search(str(hostvars)), name
            assert hostvars["autobot_local_container"].startswith("autobot-local-"), name
            ports.append(hostvars["ansible_port"])
            for published in hostvars.get("autobot_local_ports", []):
                assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", published), (
                    f"{name}: {published} is not loopback"
                )
    assert len(set(ports)) == len(ports), "one SSH port per container"


def test_molecule_reaches_its_containers_on_loopback_ports() -> None:
    config = yaml.safe_load((ROOT / ".config/molecule/config.yml").read_text(encoding="utf-8"))
    create = (ROOT / "molecule/resources/create.yml").read_text(encoding="utf-8")
    assert "'address': '127.0.0.1'" in create
    for platform in config["platforms"]:
        assert isinstance(platform["ssh_port"], int)
        for published in platform.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", published), published


def test_the_default_inventory_is_the_local_one() -> None:
    cfg = (ROOT / "ansible.cfg").read_text(encoding="utf-8")
    assert re.search(r"^inventory\s*=\s*inventory/local\s*$", cfg, re.MULTILINE)
