"""Rotating service keys and Redis passwords on the running cluster, as an operator does, under live traffic.

The cluster is first switched to the enforcement phase (signatures are checked and refused), then: a full key
rotation of main-backend while users talk to it (their requests make main-backend call npu-worker, ai-stack
and browser-service signed); a rotation stopped after `published` and run again; a Redis password rotation of
every service user; an emergency revocation. Signed requests for the refusal checks are made on the controller
with the package's own signer and the keys read from the vault, and sent with curl from a cluster machine.
The tests run in order and share the cluster's state; they leave it in the enforcement phase, healthy.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster_secrets import load_secrets

from conftest import REPO, RESULTS_DIR, Traffic, load_services, molecule_inventory, recap, run_playbook

sys.path.insert(0, str(REPO / "src"))
from autobot.security.distribution import machine_files
from autobot.security.keys import KeyId, derive_pair_key
from autobot.security.signing import new_nonce, sign_request

BACKEND, NPU, FRONTEND, REDIS = (
    "autobot-main-backend",
    "autobot-npu-worker",
    "autobot-frontend",
    "autobot-redis-stack",
)
PYTHON_HOSTS = ("autobot-main-backend", "autobot-npu-worker", "autobot-ai-stack", "autobot-browser-service")
ALL_HOSTS = (*PYTHON_HOSTS, FRONTEND, REDIS)
VERIFIERS = ("autobot-npu-worker", "autobot-ai-stack", "autobot-browser-service")
KEY_DIR = "/etc/autobot/service-keys"
LEGIT_TARGET = "http://127.0.0.1:8001"
PROVE_LOGINS = REPO / "molecule" / "resources" / "rotation" / "prove-redis-logins.yml"
TIMINGS: dict[str, float] = {}


def _text(result: Any) -> str:
    return str(result.stdout + result.stderr)


def _save(name: str, data: Any) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"rotation-{name}.json").write_text(json.dumps(data, indent=2))


def _timed(name: str, playbook: str, *args: str) -> Any:
    started = time.monotonic()
    result = run_playbook(playbook, *args, timeout=1800)
    TIMINGS[name] = round(time.monotonic() - started, 1)
    _save("timings", TIMINGS)
    return result


def _traffic(machine: Any, name: str) -> Traffic:
    return Traffic(machine(BACKEND), name, "legit", LEGIT_TARGET, duration=900, users=4, pause=0.05).start()


def _finish(traffic: Traffic) -> dict[str, Any]:
    time.sleep(3)
    traffic.stop()
    return traffic.wait()


def _current(secrets: dict[str, Any], service: str = "main-backend") -> int:
    return int(secrets["keyring"]["services"][service]["current"])


def _master(secrets: dict[str, Any], version: int, service: str = "main-backend") -> bytes:
    keys = secrets["keyring"]["services"][service]["keys"]
    return bytes.fromhex(keys.get(str(version)) or keys[version])


def _signed_call(machine: Any, master: bytes, version: int) -> str:
    """POST /api/process to npu-worker signed as main-backend with master key `version` (made here on the
    controller), sent with curl from the frontend machine; the HTTP status."""
    body = json.dumps({"task": "digest", "texts": [f"signed with v{version}"]}).encode()
    headers = sign_request(
        key=derive_pair_key(master, "npu-worker"),
        key_id=KeyId("main-backend", version),
        method="POST",
        raw_path=b"/api/process",
        query_string=b"",
        body=body,
        created=int(time.time()),
        nonce=new_nonce(),
    ).as_dict()
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]
    for name, value in {**headers, "content-type": "application/json"}.items():
        args += ["-H", f"{name}: {value}"]
    args += ["--data-binary", body.decode(), "http://autobot-npu-worker:8081/api/process"]
    return str(machine(FRONTEND).check_output(shlex.join(args)))


def _health_keys(machine: Any, host: str) -> dict[str, Any]:
    """The key versions the service on `host` reports loaded (GET /api/health)."""
    port = load_services()[host.removeprefix("autobot-")]["port"]
    answer = json.loads(machine(host).check_output(f"curl -s http://127.0.0.1:{port}/api/health"))
    keys: dict[str, Any] = answer["keys"]
    return keys


def _files(machine: Any, host: str) -> dict[str, str]:
    names = machine(host).check_output(f"ls -A {KEY_DIR}").split()
    return {name: machine(host).file(f"{KEY_DIR}/{name}").content_string.strip() for name in names}


def _expected_files(secrets: dict[str, Any], host: str, services: dict[str, Any]) -> dict[str, str]:
    files = machine_files(
        secrets, services, host.removeprefix("autobot-"), key_dir=KEY_DIR, service_group="x"
    )
    return {f.path.rsplit("/", 1)[1]: f.content for f in files}


def _assert_machines_hold_the_secrets(machine: Any, services: dict[str, Any]) -> dict[str, dict[str, str]]:
    secrets = load_secrets()
    held = {}
    for host in ALL_HOSTS:
        held[host] = _files(machine, host)
        assert held[host] == _expected_files(secrets, host, services), host
    return held


def _normalised(held: dict[str, dict[str, str]], version: int) -> dict[str, Any]:
    """Per machine, its file names and versions.json with main-backend's version written as N, so the state
    after one rotation compares with the state after another."""
    own, pair, key_id = (
        f"master.v{version}.key",
        f"pair.main-backend.v{version}.key",
        f"main-backend:v{version}",
    )
    result = {}
    for host, files in held.items():
        names = sorted(
            "master.vN.key"
            if host == BACKEND and name == own
            else name.replace(pair, "pair.main-backend.vN.key")
            for name in files
        )
        result[host] = {"names": names, "versions": files["versions.json"].replace(key_id, "main-backend:vN")}
    return result


def _phase(machine: Any, host: str) -> str:
    service = host.removeprefix("autobot-")
    return str(
        json.loads(machine(host).check_output(f"cat /etc/autobot/{service}/service-auth.json"))["phase"]
    )


def test_the_cluster_runs_in_the_enforcement_phase(machine: Any) -> None:
    result = run_playbook(
        "deploy-service-auth.yml",
        "-e",
        "middleware_file=service_auth_enforcement.py",
        "-e",
        json.dumps({"gate_override": "rotation scenario"}),
    )
    assert result.returncode == 0, _text(result)[-3000:]
    for host in PYTHON_HOSTS:
        assert _phase(machine, host) == "enforcement", host


def test_a_full_key_rotation_under_traffic_refuses_nothing_and_then_the_old_version(
    machine: Any, services: dict[str, Any]
) -> None:
    before = load_secrets()
    old = _current(before)
    old_master = _master(before, old)
    assert _signed_call(machine, old_master, old) == "200"  # the signer used below is sound

    traffic = _traffic(machine, "rotate-keys")
    time.sleep(3)
    rotated = _timed("keys_full_s", "rotate-service-keys.yml", "-e", "service=main-backend")
    result = _finish(traffic)
    assert rotated.returncode == 0, _text(rotated)[-3000:]
    assert result["requests"] > 50
    assert result["failed"] == 0, result["failures"][:5]

    after = load_secrets()
    new = _current(after)
    assert new == old + 1
    assert after["rotation"]["keys"]["main-backend"]["stage"] == "done"
    assert sorted(after["keyring"]["services"]["main-backend"]["keys"]) == [str(new)]
    held = _assert_machines_hold_the_secrets(machine, services)
    assert _health_keys(machine, BACKEND)["signing"] == [f"main-backend:v{new}"]
    for host in VERIFIERS:
        accepted = [k for k in _health_keys(machine, host)["verifying"] if k.startswith("main-backend:")]
        assert accepted == [f"main-backend:v{new}"], host
    # Machines whose files do not change are not touched (frontend holds no key of main-backend).
    assert recap(rotated.stdout)[FRONTEND]["changed"] == 0

    # After retirement a request signed with the old version is refused; the new one is accepted.
    assert _signed_call(machine, old_master, old) == "401"
    assert _signed_call(machine, _master(after, new), new) == "200"
    _save(
        "keys-full",
        {"traffic": result, "from": old, "to": new, "files": {h: sorted(f) for h, f in held.items()}},
    )


def test_an_interrupted_rotation_resumes_and_ends_as_an_uninterrupted_one(
    machine: Any, services: dict[str, Any]
) -> None:
    start = _current(load_secrets())
    reference = _normalised(_assert_machines_hold_the_secrets(machine, services), start)
    traffic = _traffic(machine, "rotate-keys-interrupted")
    time.sleep(3)
    first = _timed(
        "keys_until_published_s",
        "rotate-service-keys.yml",
        "-e",
        "service=main-backend",
        "-e",
        "rotate_until=published",
    )
    assert first.returncode == 0, _text(first)[-3000:]
    half = load_secrets()
    assert half["rotation"]["keys"]["main-backend"]["stage"] == "published"
    assert half["keyring"]["services"]["main-backend"]["staged"] == start + 1
    for host in VERIFIERS:
        assert f"main-backend:v{start + 1}" in _health_keys(machine, host)["verifying"], host
    assert _health_keys(machine, BACKEND)["signing"] == [f"main-backend:v{start}"]

    # The stage is done: running up to it again changes and restarts nothing.
    again = run_playbook(
        "rotate-service-keys.yml", "-e", "service=main-backend", "-e", "rotate_until=published"
    )
    assert again.returncode == 0, _text(again)[-3000:]
    assert all(counts["changed"] == 0 for counts in recap(again.stdout).values()), recap(again.stdout)

    resumed = _timed("keys_resume_s", "rotate-service-keys.yml", "-e", "service=main-backend")
    result = _finish(traffic)
    assert resumed.returncode == 0, _text(resumed)[-3000:]
    assert "main-backend: resuming at published" in resumed.stdout
    assert result["failed"] == 0, result["failures"][:5]
    end = load_secrets()
    assert _current(end) == start + 1
    assert end["rotation"]["keys"]["main-backend"]["stage"] == "done"
    assert (
        end["keyring"]["services"]["main-backend"]["keys"][str(start + 1)] == _master(half, start + 1).hex()
    )
    assert _normalised(_assert_machines_hold_the_secrets(machine, services), start + 1) == reference
    _save("keys-interrupted", {"traffic": result, "from": start, "to": start + 1})


def _prove_logins(
    accepted: list[dict[str, str]], refused: list[dict[str, str]]
) -> subprocess.CompletedProcess[str]:
    """The scenario's own redis-cli logins on the Redis machine (passwords in a private extra-vars file)."""
    with tempfile.TemporaryDirectory() as private:
        path = Path(private) / "logins.json"
        path.write_text(json.dumps({"redis_logins_accepted": accepted, "redis_logins_refused": refused}))
        os.chmod(path, 0o600)
        return subprocess.run(
            ["ansible-playbook", "-i", molecule_inventory(), str(PROVE_LOGINS), "-e", f"@{path}"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=300,
        )


def test_a_redis_password_rotation_under_traffic_and_the_old_passwords_refused(
    machine: Any, services: dict[str, Any]
) -> None:
    before = load_secrets()
    users = sorted(sid for sid, svc in services.items() if svc.get("redis"))
    old = [{"user": u, "password": before["redis"]["users"][u]} for u in users]
    traffic = _traffic(machine, "rotate-redis")
    time.sleep(3)
    rotated = _timed("redis_all_users_s", "rotate-redis-passwords.yml")
    result = _finish(traffic)
    assert rotated.returncode == 0, _text(rotated)[-3000:]
    assert result["failed"] == 0, result["failures"][:5]
    after = load_secrets()
    new = [{"user": u, "password": after["redis"]["users"][u]} for u in users]
    assert all(n["password"] != o["password"] for n, o in zip(new, old, strict=True))
    assert after["redis"]["previous"] == {}
    for user in users:
        assert after["rotation"]["redis"][user]["stage"] == "done"
        assert after["redis"]["generation"][user] == before["redis"].get("generation", {}).get(user, 1) + 1
    # The machines report the generation (never the password) in their status fact.
    assert (
        json.loads(machine(NPU).check_output(f"cat {KEY_DIR}/versions.json"))["redis_password_generation"]
        == after["redis"]["generation"]["npu-worker"]
    )
    _assert_machines_hold_the_secrets(machine, services)

    proof = _prove_logins(new, old)
    assert proof.returncode == 0, _text(proof)[-3000:]
    # The same check fails when it must (an old password expected to log in).
    control = _prove_logins(old[:1], [])
    assert control.returncode != 0
    assert "refused the current password of" in _text(control)
    for secret in [o["password"] for o in old] + [n["password"] for n in new]:
        assert secret not in _text(rotated) + _text(proof) + _text(control)
    _save("redis", {"traffic": result, "users": users})


def test_revocation_refuses_the_revoked_version_at_once(machine: Any, services: dict[str, Any]) -> None:
    before = load_secrets()
    version = _current(before)
    master = _master(before, version)
    assert _signed_call(machine, master, version) == "200"
    revoked = _timed("revoke_s", "rotate-service-keys.yml", "-e", f"revoke=main-backend:v{version}")
    assert revoked.returncode == 0, _text(revoked)[-3000:]
    assert _signed_call(machine, master, version) == "401"
    after = load_secrets()
    assert version in after["keyring"]["services"]["main-backend"]["revoked"]
    new = _current(after)
    assert new == version + 1
    assert _signed_call(machine, _master(after, new), new) == "200"
    _assert_machines_hold_the_secrets(machine, services)
    # Users are served again, with the new version.
    result = (
        Traffic(machine(BACKEND), "after-revoke", "legit", LEGIT_TARGET, duration=20, users=2).start().wait()
    )
    assert result["failed"] == 0, result["failures"][:5]


def test_the_cluster_is_left_in_enforcement_and_healthy(machine: Any) -> None:
    for host in PYTHON_HOSTS:
        assert _phase(machine, host) == "enforcement", host
    status = subprocess.run(
        ["autobot", "ops", "status", "-i", molecule_inventory()],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=300,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "attention" not in status.stdout
    assert "Service keys and Redis passwords" in status.stdout
    _save("timings", TIMINGS)
