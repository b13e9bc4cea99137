"""Which files each machine holds at each stage of a rotation, and the safety property that follows.

The property (docs/architecture.md, "Rotation"): a key version enters every verifier before any signer uses
it, and leaves the signers before it leaves the verifiers. Checked the way it matters on a cluster: during the
rollout between two recorded stages every machine runs either the files of the stage before or those of the
stage after (one machine restarts at a time), so for every caller/callee pair the matrix allows, a signer
loaded from either stage's files must be accepted by a verifier loaded from either stage's files. The keys are
loaded with the services' own loader (Keyring.load_dir) from directories written as the role writes them.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.secrets import matrix_services, planned_secrets

from autobot.security.distribution import VERSIONS_FILE, machine_files, machine_key_files
from autobot.security.keyring import Keyring
from autobot.security.keyring_file import ControllerKeyring, parse_keyring, plan_keyring
from autobot.security.rotation import key_begin, key_revoke, key_step

NOW = "2026-01-01T00:00:00Z"
KEY_DIR = "/etc/autobot/service-keys"


@pytest.fixture
def services(services_matrix_file: Path) -> dict[str, Any]:
    return matrix_services(services_matrix_file)


def _keys() -> Iterator[bytes]:
    n = 0
    while True:
        n += 1
        yield n.to_bytes(2, "big") * 16


def _secrets(services: dict[str, Any]) -> dict[str, Any]:
    return planned_secrets(services, new_key=_keys().__next__)


def _ring(secrets: dict[str, Any]) -> ControllerKeyring:
    return parse_keyring(secrets["keyring"])


def rotation_states(secrets: dict[str, Any], targets: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(recorded stage, secrets) after every step of the rotation playbook, in order."""
    keys = _keys()
    for _ in range(100):  # fresh material, distinct from what _secrets generated
        next(keys)
    states = [("idle", secrets)]
    current = key_begin(secrets, targets, now=NOW, new_key=keys.__next__).secrets
    states.append(("planned", current))
    for step, stage in [
        ("published", "published"),
        ("switch", "switching"),
        ("switched", "switched"),
        ("retire", "retiring"),
        ("done", "done"),
    ]:
        current = key_step(current, targets, step, now=NOW).secrets
        states.append((stage, current))
    return states


def _write_dir(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    os.chmod(directory, 0o750)
    for name, content in files.items():
        (directory / name).write_text(content + "\n", encoding="ascii")
        os.chmod(directory / name, 0o640)
    return directory


def _loaded(tmp: Path, keyring: ControllerKeyring, services: dict[str, Any]) -> dict[str, Keyring]:
    """Every service's keyring as its process loads it from the files the role installs."""
    return {
        sid: Keyring.load_dir(_write_dir(tmp / sid, machine_key_files(keyring, services, sid)), sid)
        for sid in services
    }


def refusals(
    tmp: Path, before: ControllerKeyring, after: ControllerKeyring, services: dict[str, Any]
) -> list[str]:
    """Signed calls that would be refused while machines run a mix of `before` and `after` files."""
    loaded = {
        "before": _loaded(tmp / "before", before, services),
        "after": _loaded(tmp / "after", after, services),
    }
    refused = []
    for callee, entry in services.items():
        for caller in entry.get("callers") or {}:
            for signer_state in loaded:
                key_id, key = loaded[signer_state][caller].signing_key(callee)
                for verifier_state in loaded:
                    if loaded[verifier_state][callee].verification_key(key_id) != key:
                        refused.append(f"{caller} ({signer_state}) -> {callee} ({verifier_state}): {key_id}")
    return refused


def _names(keyring: ControllerKeyring, services: dict[str, Any], service_id: str) -> set[str]:
    return set(machine_key_files(keyring, services, service_id))


def test_the_files_of_each_machine_at_each_stage_of_a_main_backend_rotation(services: dict[str, Any]) -> None:
    states = dict(rotation_states(_secrets(services), ["main-backend"]))
    verifiers = [sid for sid, svc in services.items() if "main-backend" in (svc.get("callers") or {})]
    assert sorted(verifiers) == ["ai-stack", "browser-service", "npu-worker"]
    expected = {
        # stage: (main-backend's masters, the main-backend pair keys every verifier holds)
        "idle": ({"master.v1.key"}, {"v1"}),
        "planned": ({"master.v1.key"}, {"v1", "v2"}),
        "published": ({"master.v1.key"}, {"v1", "v2"}),
        "switching": ({"master.v2.key"}, {"v1", "v2"}),
        "switched": ({"master.v2.key"}, {"v1", "v2"}),
        "retiring": ({"master.v2.key"}, {"v2"}),
        "done": ({"master.v2.key"}, {"v2"}),
    }
    for stage, (masters, pairs) in expected.items():
        ring = _ring(states[stage])
        assert {n for n in _names(ring, services, "main-backend") if n.startswith("master.")} == masters, (
            stage
        )
        for verifier in verifiers:
            held = {
                n.split(".")[2]
                for n in _names(ring, services, verifier)
                if n.startswith("pair.main-backend.")
            }
            assert held == pairs, (stage, verifier)
        # No other machine's files change at any stage of main-backend's rotation.
        for other in set(services) - {"main-backend", *verifiers}:
            assert _names(ring, services, other) == _names(_ring(states["idle"]), services, other), other


def test_versions_json_names_the_versions_each_machine_holds_at_each_stage(services: dict[str, Any]) -> None:
    def versions(secrets: dict[str, Any], service_id: str) -> dict[str, Any]:
        files = machine_files(secrets, services, service_id, key_dir=KEY_DIR, service_group="g")
        [doc] = [f for f in files if f.path.endswith("/" + VERSIONS_FILE)]
        assert (doc.owner, doc.group, doc.mode) == ("root", "g", "0640")
        data: dict[str, Any] = json.loads(doc.content)
        return data

    states = dict(rotation_states(_secrets(services), ["main-backend"]))
    assert versions(states["published"], "npu-worker") == {
        "service": "npu-worker",
        "signing": "npu-worker:v1",
        "verifying": ["ai-stack:v1", "main-backend:v1", "main-backend:v2"],
        "redis_password_generation": 1,
    }
    assert versions(states["switched"], "main-backend")["signing"] == "main-backend:v2"
    assert versions(states["done"], "npu-worker")["verifying"] == ["ai-stack:v1", "main-backend:v2"]
    assert versions(states["done"], "frontend")["redis_password_generation"] is None
    assert versions(states["done"], "redis-stack")["redis_password_generation"] == 1  # the admin's
    text = json.dumps([versions(states[s], sid) for s in states for sid in services])
    assert "password-of" not in text
    assert all(len(word) < 64 for word in text.split('"'))  # ids and numbers, never material


@pytest.mark.parametrize(
    "targets", [["main-backend"], ["npu-worker"], "all"], ids=["main-backend", "npu-worker", "all"]
)
def test_no_signed_call_is_refused_between_any_two_consecutive_stages(
    services: dict[str, Any], tmp_path: Path, targets: Any
) -> None:
    chosen = list(services) if targets == "all" else targets
    states = rotation_states(_secrets(services), chosen)
    for (first, before), (second, after) in itertools.pairwise(states):
        problems = refusals(tmp_path / f"{first}-{second}", _ring(before), _ring(after), services)
        assert problems == [], f"{first} -> {second}"


def test_rotating_everything_at_once_refuses_calls_the_staged_rotation_does_not(
    services: dict[str, Any], tmp_path: Path
) -> None:
    """The defect this design removes: making N+1 current in one go (and shipping everything) lets a
    restarted signer use N+1 before a verifier has it."""
    before = _ring(_secrets(services))
    at_once, _ = plan_keyring(before, services, rotate=["main-backend"], new_key=lambda: b"\x77" * 32)
    problems = refusals(tmp_path, before, at_once, services)
    assert "main-backend (after) -> npu-worker (before): main-backend:v2" in problems


def test_a_rerun_after_an_interruption_ends_in_the_same_state(services: dict[str, Any]) -> None:
    """Stopped after `published` (the records persist in the secrets), then the same steps again from the
    start, as the rerun of the playbook does: every step before the recorded stage changes nothing."""
    start = _secrets(services)
    uninterrupted = rotation_states(start, ["main-backend"])
    stopped = dict(uninterrupted)["published"]
    resumed = key_begin(stopped, ["main-backend"], now="later", new_key=lambda: b"\x66" * 32).secrets
    assert resumed == stopped
    assert key_step(resumed, ["main-backend"], "published", now="later").secrets == stopped
    for step in ("switch", "switched", "retire", "done"):
        resumed = key_step(resumed, ["main-backend"], step, now=NOW).secrets
    assert resumed == uninterrupted[-1][1]


def test_revocation_takes_the_version_out_of_every_machine(services: dict[str, Any], tmp_path: Path) -> None:
    secrets = _secrets(services)
    revoked = key_revoke(secrets, "main-backend:v1", now=NOW, new_key=lambda: b"\x55" * 32).secrets
    ring = _ring(revoked)
    for sid in services:
        assert not any(n.endswith("main-backend.v1.key") for n in _names(ring, services, sid)), sid
    assert "master.v2.key" in _names(ring, services, "main-backend")
    loaded = _loaded(tmp_path, ring, services)
    old = _loaded(tmp_path / "old", _ring(secrets), services)
    key_id, _ = old["main-backend"].signing_key("npu-worker")
    assert str(key_id) == "main-backend:v1"
    assert loaded["npu-worker"].verification_key(key_id) is None  # refused from then on
    # Once every machine restarted, the new version signs and verifies.
    new_id, new_key = loaded["main-backend"].signing_key("npu-worker")
    assert loaded["npu-worker"].verification_key(new_id) == new_key
