"""Helpers for the testinfra checks: the expectations come from the service matrix, never from a copy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MATRIX_FILE = REPO / "inventory" / "group_vars" / "all" / "services.yml"
LAYOUT_FILE = REPO / "inventory" / "group_vars" / "all" / "layout.yml"


def load_services() -> dict[str, Any]:
    data = yaml.safe_load(MATRIX_FILE.read_text(encoding="utf-8"))
    services: dict[str, Any] = data["autobot_services"]
    return services


@pytest.fixture(scope="session")
def services() -> dict[str, Any]:
    return load_services()


def load_layout() -> dict[str, Any]:
    """The cluster layout (service account, directories), as the roles read it."""
    layout: dict[str, Any] = yaml.safe_load(LAYOUT_FILE.read_text(encoding="utf-8"))
    return layout


@pytest.fixture(scope="session")
def layout() -> dict[str, Any]:
    return load_layout()


def host_groups(host: Any) -> list[str]:
    """The inventory groups of the host testinfra is checking."""
    groups: list[str] = host.ansible.get_variables().get("group_names", [])
    return groups


def host_service(host: Any, services: dict[str, Any]) -> str:
    """The service id of the machine testinfra is checking (from its group, as the inventory derives it)."""
    groups = set(host_groups(host))
    [service_id] = [sid for sid, svc in services.items() if svc["group"] in groups]
    return service_id


@pytest.fixture(scope="session")
def ansible_verbose_converge() -> str:
    """Converge once more at -v, as an operator debugging would, and return everything it printed."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.skip("needs Molecule's inventory (run through molecule verify)")
    result = subprocess.run(
        [
            "ansible-playbook",
            "-v",
            "-i",
            f"{ephemeral}/inventory",
            str(REPO / "molecule/resources/converge.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=900,
        # Plain text: Molecule forces colour, which would split the recap's counters with escape codes.
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def molecule_inventory() -> str:
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        pytest.skip("needs Molecule's inventory (run through molecule verify)")
    return f"{ephemeral}/inventory"


def run_playbook(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """Run playbooks/<name> on the scenario's machines, as an operator would (never raises on failure)."""
    result = subprocess.run(
        ["ansible-playbook", "-i", molecule_inventory(), str(REPO / "playbooks" / name), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )
    print(f"ansible-playbook {name} {' '.join(args)} -> rc {result.returncode}")
    return result


@pytest.fixture(scope="session")
def machine() -> Any:
    """machine("autobot-npu-worker"): a testinfra host for one machine, reached as Ansible does (sudo)."""
    import testinfra

    inventory = molecule_inventory()
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}", sudo=True)
        return cache[name]

    return get


TRAFFIC_SCRIPT = REPO / "molecule" / "resources" / "traffic" / "traffic.py"
RESULTS_DIR = REPO / ".autobot" / "test-results"


class Traffic:
    """molecule/resources/traffic/traffic.py running ON a cluster machine (a transient systemd unit),
    bounded in time and count; `wait` returns its JSON results."""

    def __init__(self, host: Any, name: str, mode: str, target: str, *, duration: float, count: int = 20000,
                 users: int = 4, pause: float = 0.05) -> None:  # fmt: skip
        self.host, self.name = host, name
        self.unit = f"autobot-traffic-{name}"
        self.out = f"/var/tmp/autobot-traffic-{name}.json"
        self.args = [mode, "--target", target, "--duration", str(duration), "--count", str(count),
                     "--users", str(users), "--pause", str(pause), "--out", self.out]  # fmt: skip
        self.limit = int(duration) + 60

    def start(self) -> Traffic:
        import base64
        import shlex

        encoded = base64.b64encode(TRAFFIC_SCRIPT.read_bytes()).decode()
        self.host.check_output(
            f"echo {encoded} | base64 -d > /var/tmp/autobot-traffic.py && rm -f {self.out}"
        )
        self.host.check_output(
            f"systemd-run --unit={self.unit} --collect --property=RuntimeMaxSec={self.limit} "
            f"/usr/bin/python3 /var/tmp/autobot-traffic.py {shlex.join(self.args)}"
        )
        return self

    def stop(self) -> None:
        self.host.run(f"systemctl stop {self.unit}")

    def wait(self) -> dict[str, Any]:
        import json
        import time

        deadline = time.monotonic() + self.limit + 30
        while self.host.run(f"systemctl is-active --quiet {self.unit}").rc == 0:
            assert time.monotonic() < deadline, f"{self.unit} still runs"
            time.sleep(1)
        result: dict[str, Any] = json.loads(self.host.check_output(f"cat {self.out}"))
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"traffic-{self.name}.json").write_text(json.dumps(result, indent=2))
        return result


def recap(output: str) -> dict[str, dict[str, int]]:
    """host -> {ok, changed, unreachable, failed, ...} from an ansible-playbook run's PLAY RECAP."""
    import re

    found: dict[str, dict[str, int]] = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", line.strip())
        if match:
            found[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return found
