"""The rotation playbooks' controller side, run for real with ansible-playbook on an inventory without any
machine (every machine play matches no host): the recorded stages in the vault file, a stop on purpose and
the rerun that resumes, revocation, and refusals that change nothing. The machine side runs in Molecule
(molecule/resources/tests/rotation)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.constants import DEFAULT_VAULT_ID_MATCH
from ansible.parsing.vault import VaultLib, VaultSecret

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def make_inventory(root: Path) -> Path:
    """An inventory with no host: only the controller's own plays run. Its keys live under `root`."""
    inventory = root / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "group_vars" / "all").symlink_to(ROOT / "inventory" / "group_vars" / "all")
    store = root / "keys"
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "autobot_env": "local",
                        "autobot_keys_store": str(store),
                        "autobot_vault_password_file": str(store / "vault-password"),
                        "autobot_vault_password_generate": True,
                    }
                }
            }
        )
    )
    return inventory


def play(inventory: Path, playbook: str, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [str(PLAYBOOK), "-i", str(inventory), str(ROOT / "playbooks" / playbook)]
    for item in extra:
        args += ["-e", item]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)


def vault(root: Path) -> dict[str, Any]:
    store = root / "keys"
    secret = VaultSecret((store / "vault-password").read_bytes().strip())
    data: dict[str, Any] = yaml.safe_load(
        VaultLib([(DEFAULT_VAULT_ID_MATCH, secret)]).decrypt((store / "secrets.vault.yml").read_bytes())
    )
    return data


def shape(secrets: dict[str, Any]) -> dict[str, Any]:
    """Everything but key material, passwords and times: what two runs must agree on."""
    services = {
        name: {k: v for k, v in entry.items() if k != "keys"}
        | {"versions": sorted(int(v) for v in entry["keys"])}
        for name, entry in secrets["keyring"]["services"].items()
    }
    records = {
        kind: {
            name: {k: v for k, v in record.items() if k not in ("started", "updated")}
            for name, record in rows.items()
        }
        for kind, rows in (secrets.get("rotation") or {}).items()
    }
    return {"services": services, "records": records, "redis_previous": sorted(secrets["redis"]["previous"])}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secrets of a fresh environment, as generate-service-keys.yml writes them."""
    root = tmp_path_factory.mktemp("generated")
    result = play(make_inventory(root), "generate-service-keys.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    return root / "keys"


def copy_of(generated: Path, tmp_path: Path) -> Path:
    inventory = make_inventory(tmp_path)
    shutil.copytree(generated, tmp_path / "keys")
    return inventory


def test_an_interrupted_rotation_resumes_and_ends_as_an_uninterrupted_one(
    generated: Path, tmp_path: Path
) -> None:
    whole = copy_of(generated, tmp_path / "whole")
    assert play(whole, "rotate-service-keys.yml", "service=main-backend").returncode == 0

    stopped = copy_of(generated, tmp_path / "stopped")
    first = play(stopped, "rotate-service-keys.yml", "service=main-backend", "rotate_until=published")
    assert first.returncode == 0, first.stdout[-3000:]
    assert "main-backend: published" in first.stdout
    half = vault(tmp_path / "stopped")
    assert half["rotation"]["keys"]["main-backend"]["stage"] == "published"
    assert half["keyring"]["services"]["main-backend"]["staged"] == 2
    staged_key = half["keyring"]["services"]["main-backend"]["keys"]["2"]

    rerun = play(stopped, "rotate-service-keys.yml", "service=main-backend")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "main-backend: resuming at published (v2)" in rerun.stdout
    end = vault(tmp_path / "stopped")
    assert shape(end) == shape(vault(tmp_path / "whole"))
    assert shape(end)["services"]["main-backend"] == {"current": 2, "versions": [2]}
    assert end["keyring"]["services"]["main-backend"]["keys"]["2"] == staged_key  # resumed, not regenerated
    assert end["rotation"]["keys"]["main-backend"]["stage"] == "done"
    assert (
        end["keyring"]["services"]["npu-worker"]
        == vault(tmp_path / "whole")["keyring"]["services"]["npu-worker"]
    )


def test_revocation_is_recorded_and_a_rerun_changes_nothing(generated: Path, tmp_path: Path) -> None:
    inventory = copy_of(generated, tmp_path)
    revoked = play(inventory, "rotate-service-keys.yml", "revoke=ai-stack:v1")
    assert revoked.returncode == 0, revoked.stdout[-3000:]
    assert "ai-stack:v1 revoked" in revoked.stdout
    entry = vault(tmp_path)["keyring"]["services"]["ai-stack"]
    assert (entry["current"], entry["revoked"], sorted(entry["keys"])) == (2, [1], ["2"])
    before = (tmp_path / "keys" / "secrets.vault.yml").read_bytes()
    again = play(inventory, "rotate-service-keys.yml", "revoke=ai-stack:v1")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "ai-stack:v1 was already revoked" in again.stdout
    assert (tmp_path / "keys" / "secrets.vault.yml").read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["service=nope"], "give at most one service of the matrix"),
        (["rotate_until=halfway"], "rotate_until one of planned, published, switched, done"),
        (["revoke=ai-stack:v7"], "cannot revoke ai-stack:v7: v7 is not held"),
        (["revoke=ai-stack:v1", "service=ai-stack"], "or revoke=<service>:v<N> alone"),
    ],
)
def test_a_bad_request_is_refused_and_changes_nothing(
    generated: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    inventory = copy_of(generated, tmp_path)
    before = (tmp_path / "keys" / "secrets.vault.yml").read_bytes()
    refused = play(inventory, "rotate-service-keys.yml", *extra)
    assert refused.returncode != 0
    assert message in " ".join((refused.stdout + refused.stderr).split())
    assert (tmp_path / "keys" / "secrets.vault.yml").read_bytes() == before


def test_a_redis_password_rotation_stopped_after_the_add_resumes_to_done(
    generated: Path, tmp_path: Path
) -> None:
    inventory = copy_of(generated, tmp_path)
    old = vault(tmp_path)["redis"]["users"]["npu-worker"]
    first = play(inventory, "rotate-redis-passwords.yml", "service=npu-worker", "rotate_until=added")
    assert first.returncode == 0, first.stdout[-3000:]
    half = vault(tmp_path)
    assert half["rotation"]["redis"]["npu-worker"]["stage"] == "added"
    assert half["redis"]["previous"] == {"npu-worker": old}
    new = half["redis"]["users"]["npu-worker"]
    assert new != old
    rerun = play(inventory, "rotate-redis-passwords.yml", "service=npu-worker")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    end = vault(tmp_path)
    assert end["rotation"]["redis"]["npu-worker"] == end["rotation"]["redis"]["npu-worker"] | {
        "stage": "done"
    }
    assert "retired_password" not in end["rotation"]["redis"]["npu-worker"]
    assert (end["redis"]["users"]["npu-worker"], end["redis"]["previous"]) == (new, {})
    assert end["redis"]["generation"] == {"npu-worker": 2}
    for output in (first.stdout, rerun.stdout):
        assert old not in output
        assert new not in output
    refused = play(inventory, "rotate-redis-passwords.yml", "service=frontend")
    assert refused.returncode != 0
    assert "give at most one Redis ACL user" in " ".join(refused.stdout.split())


@pytest.mark.parametrize(
    "playbook",
    [
        "playbooks/rotate-service-keys.yml",
        "playbooks/rotate-redis-passwords.yml",
        "molecule/resources/rotation/prove-redis-logins.yml",
    ],
)
def test_the_playbooks_parse(playbook: str) -> None:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    result = subprocess.run(
        [str(PLAYBOOK), "-i", str(ROOT / "inventory" / "local"), str(ROOT / playbook), "--syntax-check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
