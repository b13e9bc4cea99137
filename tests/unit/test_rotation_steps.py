"""The rotation records kept in the secrets (autobot.security.rotation) and the autobot_secrets module that
applies them on the controller (run as Ansible runs it: a Python process reading its arguments file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.secrets import matrix_services, planned_secrets

from autobot.security.keyring_file import ServiceKeys, dump_keyring, parse_keyring, plan_keyring
from autobot.security.rotation import (
    RotationError,
    key_begin,
    key_revoke,
    key_step,
    redis_begin,
    redis_step,
    stages,
)

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "ansible" / "plugins" / "modules" / "autobot_secrets.py"
NOW = "2026-01-01T00:00:00Z"
NEW = b"\x42" * 32


@pytest.fixture
def services(services_matrix_file: Path) -> dict[str, Any]:
    return matrix_services(services_matrix_file)


@pytest.fixture
def secrets(services: dict[str, Any]) -> dict[str, Any]:
    return planned_secrets(services)


def _entry(secrets: dict[str, Any], service: str) -> ServiceKeys:
    return parse_keyring(secrets["keyring"]).services[service]


def _record(secrets: dict[str, Any], service: str, kind: str = "keys") -> dict[str, Any]:
    record: dict[str, Any] = secrets["rotation"][kind][service]
    return record


# -- service keys ---------------------------------------------------------------------------------------


def test_begin_stages_the_next_version_and_records_it_in_the_same_document(secrets: dict[str, Any]) -> None:
    result = key_begin(secrets, ["main-backend"], now=NOW, new_key=lambda: NEW)
    assert result.changes == ["main-backend:v1 -> main-backend:v2 planned"]
    entry = _entry(result.secrets, "main-backend")
    assert (entry.current, entry.staged, entry.keys[2]) == (1, 2, NEW)
    assert _record(result.secrets, "main-backend") == {
        "stage": "planned",
        "version": 2,
        "started": NOW,
        "updated": NOW,
    }
    assert _entry(result.secrets, "npu-worker") == _entry(secrets, "npu-worker")
    assert secrets.get("rotation") is None  # the input is not changed


def test_each_step_moves_only_what_is_at_its_starting_stage(secrets: dict[str, Any]) -> None:
    planned = key_begin(secrets, ["main-backend"], now=NOW, new_key=lambda: NEW).secrets
    # Steps out of order change nothing: they find no record at their starting stage.
    for step in ("switch", "switched", "retire", "done"):
        assert key_step(planned, ["main-backend"], step, now=NOW).secrets == planned
    walked = planned
    for step, stage, current, previous in [
        ("published", "published", 1, None),
        ("switch", "switching", 2, 1),
        ("switched", "switched", 2, 1),
        ("retire", "retiring", 2, None),
        ("done", "done", 2, None),
    ]:
        walked = key_step(walked, ["main-backend"], step, now=NOW).secrets
        again = key_step(walked, ["main-backend"], step, now="later").secrets
        assert again == walked, f"{step} is not idempotent"
        entry = _entry(walked, "main-backend")
        assert (_record(walked, "main-backend")["stage"], entry.current, entry.previous) == (
            stage,
            current,
            previous,
        )
    assert _entry(walked, "main-backend").keys == {2: NEW}
    assert stages(walked, "keys", ["main-backend", "npu-worker"]) == {
        "main-backend": "done",
        "npu-worker": "none",
    }


def test_begin_resumes_a_rotation_under_way_and_only_starts_the_others(secrets: dict[str, Any]) -> None:
    planned = key_begin(secrets, ["main-backend"], now=NOW, new_key=lambda: NEW).secrets
    published = key_step(planned, ["main-backend"], "published", now=NOW).secrets
    both = key_begin(published, ["main-backend", "npu-worker"], now="later", new_key=lambda: b"\x07" * 32)
    assert both.changes == [
        "main-backend: resuming at published (v2)",
        "npu-worker:v1 -> npu-worker:v2 planned",
    ]
    assert _entry(both.secrets, "main-backend").keys[2] == NEW  # the staged key is not regenerated
    assert stages(both.secrets, "keys", ["main-backend", "npu-worker"]) == {
        "main-backend": "published",
        "npu-worker": "planned",
    }


def test_a_previous_version_left_by_an_earlier_rotation_is_retired_after_the_check(
    secrets: dict[str, Any], services: dict[str, Any]
) -> None:
    """A vault from before staged rotations: `--rotate` made v2 current and kept v1 on every verifier."""
    old, _ = plan_keyring(parse_keyring(secrets["keyring"]), services, rotate=["ai-stack"])
    legacy = {**secrets, "keyring": json.loads(json.dumps(yaml.safe_load(dump_keyring(old))))}
    begun = key_begin(legacy, ["ai-stack"], now=NOW, new_key=lambda: NEW)
    assert "v1 is still accepted from an earlier rotation" in begun.changes[0]
    assert _record(begun.secrets, "ai-stack")["stage"] == "switched"
    retired = key_step(begun.secrets, ["ai-stack"], "retire", now=NOW).secrets
    assert _entry(retired, "ai-stack").accepted == (2,)


def test_a_record_that_disagrees_with_the_keyring_is_refused(secrets: dict[str, Any]) -> None:
    planned = key_begin(secrets, ["main-backend"], now=NOW, new_key=lambda: NEW).secrets
    planned["rotation"]["keys"]["main-backend"]["version"] = 7
    with pytest.raises(RotationError, match=r"record \(stage planned, v7\) does not match the keyring"):
        key_step(planned, ["main-backend"], "published", now=NOW)


@pytest.mark.parametrize(
    ("targets", "message"),
    [(["nope"], "cannot rotate nope: not a service with keys"), ([], "nothing to rotate")],
)
def test_bad_targets_are_refused(secrets: dict[str, Any], targets: list[str], message: str) -> None:
    with pytest.raises(RotationError, match=message):
        key_begin(secrets, targets, now=NOW, new_key=lambda: NEW)
    with pytest.raises(RotationError, match="no keyring"):
        key_begin({}, ["main-backend"], now=NOW, new_key=lambda: NEW)
    with pytest.raises(RotationError, match="unknown key rotation step"):
        key_step(secrets, ["main-backend"], "jump", now=NOW)


# -- revocation -----------------------------------------------------------------------------------------


def test_revoking_the_signing_version_of_an_idle_service(secrets: dict[str, Any]) -> None:
    result = key_revoke(secrets, "main-backend:v1", now=NOW, new_key=lambda: NEW)
    assert result.changes == ["main-backend:v1 revoked", "main-backend signs with v2"]
    entry = _entry(result.secrets, "main-backend")
    assert (entry.current, entry.revoked, entry.keys) == (2, (1,), {2: NEW})
    assert "main-backend" not in (result.secrets.get("rotation") or {}).get("keys", {})
    again = key_revoke(result.secrets, "main-backend:v1", now="later", new_key=lambda: b"\x01" * 32)
    assert again.secrets == result.secrets
    assert again.changes == ["main-backend:v1 was already revoked"]


def test_revoking_during_a_rotation_ends_or_adjusts_its_record(secrets: dict[str, Any]) -> None:
    planned = key_begin(secrets, ["main-backend"], now=NOW, new_key=lambda: NEW).secrets
    # The staged version is compromised: the rotation ends, nobody ever signed with it.
    aborted = key_revoke(planned, "main-backend:v2", now=NOW, new_key=lambda: b"\x09" * 32).secrets
    assert _entry(aborted, "main-backend").accepted == (1,)
    assert _record(aborted, "main-backend")["stage"] == "done"
    assert _record(aborted, "main-backend")["note"] == "ended by the revocation of main-backend:v2"
    # The signing version is compromised while v2 is staged: v2 signs at once.
    promoted = key_revoke(planned, "main-backend:v1", now=NOW, new_key=lambda: b"\x09" * 32).secrets
    assert _entry(promoted, "main-backend") == ServiceKeys(current=2, keys={2: NEW}, revoked=(1,))
    assert _record(promoted, "main-backend")["stage"] == "done"
    # After the switch, the new current version is compromised: a fresh v3 signs, v1 stays until retired.
    switched = key_step(
        key_step(planned, ["main-backend"], "published", now=NOW).secrets, ["main-backend"], "switch", now=NOW
    ).secrets
    fresh = key_revoke(switched, "main-backend:v2", now=NOW, new_key=lambda: b"\x03" * 32).secrets
    assert _entry(fresh, "main-backend").accepted == (3, 1)
    assert _record(fresh, "main-backend") | {"updated": None} == {
        "stage": "switched",
        "version": 3,
        "started": NOW,
        "updated": None,
    }


@pytest.mark.parametrize(
    ("key_id", "message"),
    [
        ("main-backend:v9", r"cannot revoke main-backend:v9: v9 is not held \(accepted: v1\)"),
        ("nope:v1", "the keyring has no keys for 'nope'"),
        ("main-backend", "malformed key id"),
    ],
)
def test_a_revocation_that_cannot_apply_is_a_clear_error(
    secrets: dict[str, Any], key_id: str, message: str
) -> None:
    with pytest.raises(RotationError, match=message):
        key_revoke(secrets, key_id, now=NOW, new_key=lambda: NEW)


# -- Redis passwords ------------------------------------------------------------------------------------


def test_a_redis_password_rotation_keeps_the_old_password_until_the_proof(secrets: dict[str, Any]) -> None:
    begun = redis_begin(secrets, ["npu-worker"], now=NOW, new_password=lambda: "new-password")
    redis = begun.secrets["redis"]
    assert redis["users"]["npu-worker"] == "new-password"
    assert redis["previous"] == {"npu-worker": "password-of-npu-worker"}
    assert redis["generation"] == {"npu-worker": 2}
    assert begun.changes == ["redis user npu-worker: password generation 2 planned"]
    assert "password" not in " ".join(begun.changes).replace("password generation", "")
    walked = begun.secrets
    for step, stage in [("added", "added"), ("switched", "switched"), ("remove", "removing")]:
        walked = redis_step(walked, ["npu-worker"], step, now=NOW).secrets
        assert redis_step(walked, ["npu-worker"], step, now="later").secrets == walked
        assert _record(walked, "npu-worker", "redis")["stage"] == stage
    assert walked["redis"]["previous"] == {}
    assert _record(walked, "npu-worker", "redis")["retired_password"] == "password-of-npu-worker"
    done = redis_step(walked, ["npu-worker"], "done", now=NOW).secrets
    assert "retired_password" not in _record(done, "npu-worker", "redis")
    assert "password-of-npu-worker" not in json.dumps(done)
    # The next rotation counts on.
    second = redis_begin(done, ["npu-worker"], now=NOW, new_password=lambda: "third").secrets
    assert second["redis"]["generation"]["npu-worker"] == 3


def test_a_redis_rotation_under_way_is_resumed_not_restarted(secrets: dict[str, Any]) -> None:
    begun = redis_begin(secrets, ["npu-worker"], now=NOW, new_password=lambda: "new-password").secrets
    again = redis_begin(begun, ["npu-worker"], now="later", new_password=lambda: "other")
    assert again.secrets == begun
    assert again.changes == ["redis user npu-worker: resuming at planned"]
    with pytest.raises(RotationError, match="not a Redis ACL user"):
        redis_begin(secrets, ["frontend"], now=NOW, new_password=lambda: "x")


# -- the module, as Ansible runs it ------------------------------------------------------------------------


def run_module(
    tmp_path: Path, current: dict[str, Any], services: dict[str, Any], **args: Any
) -> dict[str, Any]:
    args_file = tmp_path / "args.json"
    module_args = {"current": current, "services": services, "admin_user": "admin", **args}
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": module_args}))
    out = subprocess.run(
        [sys.executable, str(MODULE), str(args_file)], capture_output=True, text=True, timeout=60, check=False
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_the_module_applies_a_step_and_reports_the_stages(
    tmp_path: Path, secrets: dict[str, Any], services: dict[str, Any]
) -> None:
    result = run_module(tmp_path, secrets, services, step="keys-begin", targets=["ai-stack"])
    assert result["changed"] is True
    assert result["differs"] is True
    assert result["stages"] == {"ai-stack": "planned"}
    again = run_module(tmp_path, result["secrets"], services, step="keys-begin", targets=["ai-stack"])
    assert again["changed"] is False
    assert again["secrets"] == result["secrets"]


def test_the_module_refuses_a_bad_step_with_a_message_that_names_no_secret(
    tmp_path: Path, secrets: dict[str, Any], services: dict[str, Any]
) -> None:
    result = run_module(tmp_path, secrets, services, step="keys-revoke", revoke="ai-stack:v4")
    assert result["failed"] is True
    assert "cannot revoke ai-stack:v4: v4 is not held" in result["msg"]
    assert "secrets" not in result
    # The step task shows only this message (its own output is hidden by no_log).
    assert not any(value in result["msg"] for value in secrets["redis"]["users"].values())
    assert not any(entry["keys"]["1"] in result["msg"] for entry in secrets["keyring"]["services"].values())


def test_generate_keeps_rotation_records_and_generations_and_migrates_a_v1_keyring(
    tmp_path: Path, secrets: dict[str, Any], services: dict[str, Any]
) -> None:
    begun = redis_begin(secrets, ["ai-stack"], now=NOW, new_password=lambda: "x" * 64).secrets
    begun = key_begin(begun, ["ai-stack"], now=NOW, new_key=lambda: NEW).secrets
    result = run_module(tmp_path, begun, services)
    assert result["changed"] is False, result["changes"]
    assert result["secrets"] == begun
    v1 = {**secrets, "keyring": {**secrets["keyring"], "format": "autobot-keyring-v1"}}
    migrated = run_module(tmp_path, v1, services)
    assert migrated["changed"] is True
    assert migrated["secrets"]["keyring"]["format"] == "autobot-keyring-v2"
    assert migrated["secrets"]["redis"]["generation"] == {}
