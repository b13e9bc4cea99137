"""`autobot keys generate` / `inspect`, and the controller keyring file they manage."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.security.auth_support import MATRIX_FILE, controller_keyring, load_services, write_key_dir

from autobot.cli import main
from autobot.security.keyring_file import KeyringFileError, plan_keyring, read_keyring

HEX64 = re.compile(r"[0-9a-f]{64}")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["keys", *args])
    return result.exit_code, result.output


def _all_key_hex(path: Path) -> list[str]:
    ring = read_keyring(path)
    return [k.hex() for entry in ring.services.values() for k in entry.keys.values()]


def _assert_no_key_material(output: str, keys: list[str]) -> None:
    assert not HEX64.search(output)
    for key in keys:
        assert key[:16] not in output
        assert key[-16:] not in output


def test_generate_creates_a_key_for_every_matrix_service(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    assert code == 0, output
    services = list(load_services())
    assert output.splitlines() == [f"{s}:v1 new" for s in services]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = yaml.safe_load(out.read_text())
    assert doc["format"] == "autobot-keyring-v2"
    assert set(doc["services"]) == set(services)
    assert all(HEX64.fullmatch(e["keys"][1]) and e["current"] == 1 for e in doc["services"].values())
    _assert_no_key_material(output, _all_key_hex(out))


def test_generate_reuses_existing_keys_and_adds_new_services(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    partial_matrix = tmp_path / "matrix.yml"
    services = load_services()
    partial = {k: v for k, v in services.items() if k in ("main-backend", "npu-worker")}
    partial_matrix.write_text(yaml.safe_dump({"autobot_services": partial}))
    assert _run("generate", "--matrix", str(partial_matrix), "--out", str(out))[0] == 0
    before = read_keyring(out)
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    assert code == 0, output
    after = read_keyring(out)
    for service in ("main-backend", "npu-worker"):
        assert after.services[service] == before.services[service]
        assert f"{service}:v1 kept" in output
    assert "ai-stack:v1 new" in output
    # a third run changes nothing at all
    text = out.read_text()
    assert _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))[0] == 0
    assert out.read_text() == text


def test_rotate_adds_next_version_and_keeps_current(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    v1 = read_keyring(out).services["ai-stack"].keys[1]
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out), "--rotate", "ai-stack")
    assert code == 0, output
    assert "ai-stack:v2 rotated" in output
    assert "ai-stack:v1 kept" in output
    entry = read_keyring(out).services["ai-stack"]
    assert entry.current == 2
    assert entry.keys[1] == v1
    assert entry.keys[2] != v1
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out), "--rotate", "ai-stack")
    assert "ai-stack:v1 retired" in output
    assert sorted(read_keyring(out).services["ai-stack"].keys) == [2, 3]
    _assert_no_key_material(output, _all_key_hex(out))


def test_rotate_unknown_service_fails_without_touching_the_file(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    text = out.read_text()
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out), "--rotate", "nope")
    assert code == 2
    assert "nope" in output
    assert out.read_text() == text


def test_vault_encrypted_keyring_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    out.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162636465\n")
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    assert code == 2
    assert "ansible-vault encrypted" in output
    assert out.read_text().startswith("$ANSIBLE_VAULT")


def test_malformed_keyring_error_never_quotes_keys(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    secret = "ab" * 32
    out.write_text(
        f"format: autobot-keyring-v1\nservices:\n  ai-stack: {{current: 1, keys: {{1: {secret}x}}}}\n"
    )
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    assert code == 2
    assert secret not in output
    out.write_text(f"format: autobot-keyring-v1\nservices: [{secret}\n")
    code, output = _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))
    assert code == 2
    assert secret not in output


def test_inspect_keyring_prints_ids_and_fingerprints_only(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out), "--rotate", "main-backend")
    _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out), "--rotate", "main-backend")
    code, output = _run("inspect", "--keyring", str(out))
    assert code == 0, output
    assert "mode 0600" in output
    assert re.search(r"main-backend:v2\s+current\s+fingerprint [0-9a-f]{12}", output)
    assert re.search(r"main-backend:v1\s+previous", output)
    _assert_no_key_material(output, _all_key_hex(out))


def test_inspect_dir_prints_files_modes_and_roles(tmp_path: Path) -> None:
    ring = controller_keyring()
    ring = controller_keyring(rotate=("main-backend",), base=ring)
    key_dir = write_key_dir(tmp_path / "keys", "npu-worker", ring)
    code, output = _run("inspect", "--dir", str(key_dir), "--service", "npu-worker")
    assert code == 0, output
    assert "master.v1.key" in output
    assert "signing (current)" in output
    assert re.search(r"pair\.main-backend\.v2\.key\s+main-backend:v2\s+mode 0640", output)
    assert "verifies ai-stack (accepted)" in output
    keys = [p.read_text().strip() for p in key_dir.glob("*.key")]
    _assert_no_key_material(output, keys)


def test_inspect_dir_errors_are_clear(tmp_path: Path) -> None:
    code, output = _run("inspect", "--dir", str(tmp_path / "missing"), "--service", "npu-worker")
    assert code == 2
    assert "does not exist" in output
    code, output = _run("inspect", "--dir", str(tmp_path))
    assert code == 2
    assert "--service" in output
    code, output = _run("inspect")
    assert code == 2


def test_keyring_write_is_atomic_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    out = tmp_path / "keyring.yml"
    old = os.umask(0)
    try:
        assert _run("generate", "--matrix", str(MATRIX_FILE), "--out", str(out))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.yml"]  # no temp file left behind


def test_plan_refuses_current_not_highest() -> None:
    from autobot.security.keyring_file import parse_keyring

    with pytest.raises(KeyringFileError, match="current"):
        parse_keyring(
            {
                "format": "autobot-keyring-v1",
                "services": {"a": {"current": 1, "keys": {1: "ab" * 32, 2: "cd" * 32}}},
            }
        )


def test_plan_keeps_services_that_left_the_matrix() -> None:
    ring, _ = plan_keyring(None, ["a", "b"])
    ring2, changes = plan_keyring(ring, ["a"])
    assert set(ring2.services) == {"a", "b"}
    assert any(str(c) == "b:v1 kept (not in the matrix)" for c in changes)
