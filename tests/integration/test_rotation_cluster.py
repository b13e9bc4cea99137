"""Key rotation on the four Python services as real `autobot serve` processes in the enforcement phase.

Each stage installs the files `machine_key_files` decides (as the role does), then restarts the services whose
files changed one at a time, as the rotation playbook does; after every single restart (every mix of old and
new processes a rolling restart passes through) users call main-backend, whose signed calls reach npu-worker,
ai-stack and browser-service. The verifiers' audit logs must hold no refusal of main-backend. The same
harness shows the defect of the old one-step rotation (a signer restarted before its verifiers is refused),
and an emergency revocation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from tests.integration.cluster import Cluster, read_audit, running_cluster
from tests.security.auth_support import signed_request
from tests.support.redis_server import RedisServer

from autobot.security.distribution import machine_key_files
from autobot.security.keyring import Keyring
from autobot.security.keyring_file import dump_keyring, parse_keyring, plan_keyring, read_keyring
from autobot.security.rotation import key_begin, key_revoke, key_step
from autobot.security.signing import new_nonce

pytestmark = pytest.mark.slow

VERIFIERS = ("npu-worker", "ai-stack", "browser-service")
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("rotation"), redis_server.url, phase="enforcement") as built:
        yield built


def _secrets_of(cluster: Cluster) -> dict[str, Any]:
    keyring = read_keyring(cluster.root / "keyring.yml")
    doc: dict[str, Any] = json.loads(json.dumps({"keyring": yaml.safe_load(dump_keyring(keyring))}))
    return doc


def install(cluster: Cluster, secrets: dict[str, Any]) -> list[str]:
    """Install every machine's key files (adding, replacing, removing, as the role does); return the
    services whose files changed."""
    keyring = parse_keyring(secrets["keyring"])
    changed = []
    for name, svc in cluster.services.items():
        wanted = machine_key_files(keyring, cluster.matrix, name)
        present = {p.name: p.read_text().strip() for p in svc.keys_dir.glob("*.key")}
        if present == wanted:
            continue
        for stale in set(present) - set(wanted):
            (svc.keys_dir / stale).unlink()
        for file_name, content in wanted.items():
            path = svc.keys_dir / file_name
            path.write_text(content + "\n", encoding="ascii")
            os.chmod(path, 0o640)
        changed.append(name)
    return changed


def user_calls(cluster: Cluster) -> list[str]:
    """One round of user requests whose handling makes main-backend call every verifier, signed; the
    failures, if any."""
    failures = []
    with httpx.Client(base_url=cluster["main-backend"].url, timeout=30, trust_env=False) as user:
        session = user.post("/api/chat/sessions", json={}).json()["session_id"]
        answers = [
            user.post("/api/chat", json={"session_id": session, "message": "rotation"}),
            user.post("/api/tools/process", json={"task": "digest", "texts": ["rotation"]}),
            user.post("/api/tools/browser-sessions", json={"url": "https://example.org/rotation"}),
        ]
    for response in answers:
        if response.status_code not in (200, 201):
            failures.append(f"{response.request.url.path} {response.status_code} {response.text[:200]}")
    return failures


def rolling_restart(cluster: Cluster, names: list[str]) -> list[str]:
    """Restart one service at a time; after each restart, a round of user calls. All failures."""
    failures = []
    for name in names:
        cluster.restart(name)
        failures += [f"after restarting {name}: {f}" for f in user_calls(cluster)]
    return failures


def health_keys(cluster: Cluster, service: str) -> dict[str, Any]:
    response = httpx.get(cluster[service].url + "/api/health", timeout=5, trust_env=False)
    keys: dict[str, Any] = response.json()["keys"]
    return keys


def refusals_of_main_backend(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        r
        for name in VERIFIERS
        for r in read_audit(cluster[name].audit_log)
        if r["caller"] == "main-backend" and r["decision"] != "allow"
    ]


def signed_with(master: bytes, version: int) -> tuple[bytes, dict[str, str]]:
    """A POST /api/process to npu-worker signed by main-backend with master key `version`."""
    body = json.dumps({"texts": ["an old key"], "dimensions": 8}).encode()
    signer = Keyring("main-backend", masters={version: master})
    request = signed_request(
        signer, "npu-worker", "POST", b"/api/process", body=body, created=int(time.time()), nonce=new_nonce()
    )
    headers = {name.decode(): value.decode() for name, value in request.headers}
    return body, {**headers, "content-type": "application/json"}


def test_a_staged_rotation_refuses_no_signed_call_at_any_point_of_the_rolling_restarts(
    cluster: Cluster,
) -> None:
    assert user_calls(cluster) == []
    assert health_keys(cluster, "main-backend") == {"signing": ["main-backend:v1"], "verifying": []}
    original = _secrets_of(cluster)
    old_master = parse_keyring(original["keyring"]).services["main-backend"].keys[1]

    # (a) plan, (b) publish: only the verifiers' files change; each restarts in turn.
    secrets = key_begin(original, ["main-backend"], now=NOW, new_key=lambda: b"\x21" * 32).secrets
    assert sorted(install(cluster, secrets)) == sorted(VERIFIERS)
    assert rolling_restart(cluster, list(VERIFIERS)) == []
    for name in VERIFIERS:
        assert "main-backend:v2" in health_keys(cluster, name)["verifying"], name
    assert health_keys(cluster, "main-backend")["signing"] == ["main-backend:v1"]

    # (c) switch: only the signer's files change.
    for step in ("published", "switch"):
        secrets = key_step(secrets, ["main-backend"], step, now=NOW).secrets
    assert install(cluster, secrets) == ["main-backend"]
    assert rolling_restart(cluster, ["main-backend"]) == []
    # (d) checked, not assumed: the signer reports the new version before the old one is retired.
    assert health_keys(cluster, "main-backend")["signing"] == ["main-backend:v2"]

    for step in ("switched", "retire"):
        secrets = key_step(secrets, ["main-backend"], step, now=NOW).secrets
    assert sorted(install(cluster, secrets)) == sorted(VERIFIERS)
    assert rolling_restart(cluster, list(VERIFIERS)) == []
    for name in VERIFIERS:
        accepted = [k for k in health_keys(cluster, name)["verifying"] if k.startswith("main-backend:")]
        assert accepted == ["main-backend:v2"], name

    assert refusals_of_main_backend(cluster) == []
    allowed = {
        r["keyid"] for r in read_audit(cluster["npu-worker"].audit_log) if r["caller"] == "main-backend"
    }
    assert allowed == {"main-backend:v1", "main-backend:v2"}

    # After retirement, a request signed with the old version is refused.
    body, headers = signed_with(old_master, 1)
    refused = httpx.post(
        cluster["npu-worker"].url + "/api/process", content=body, headers=headers, trust_env=False
    )
    assert refused.status_code == 401, refused.text
    (cluster.root / "keyring.yml").write_text(dump_keyring(parse_keyring(secrets["keyring"])))


def test_the_one_step_rotation_refuses_calls_when_the_signer_restarts_first(cluster: Cluster) -> None:
    """The defect this replaces: N+1 made current and shipped everywhere at once."""
    keyring, _ = plan_keyring(
        read_keyring(cluster.root / "keyring.yml"), cluster.matrix, rotate=["main-backend"]
    )
    secrets = json.loads(json.dumps({"keyring": yaml.safe_load(dump_keyring(keyring))}))
    install(cluster, secrets)
    failures = rolling_restart(cluster, ["main-backend"])
    assert failures, "a signer on N+1 before its verifiers must be refused"
    refused = {r["keyid"] for r in refusals_of_main_backend(cluster)}
    assert "main-backend:v3" in refused
    for name in VERIFIERS:
        cluster.restart(name)
    assert user_calls(cluster) == []  # consistent again once every machine restarted
    (cluster.root / "keyring.yml").write_text(dump_keyring(keyring))


def test_a_revoked_version_is_refused_at_once_and_a_new_one_signs(cluster: Cluster) -> None:
    keyring = read_keyring(cluster.root / "keyring.yml")
    current = keyring.services["main-backend"]
    revoked_master = current.keys[current.current]
    secrets = json.loads(json.dumps({"keyring": yaml.safe_load(dump_keyring(keyring))}))
    result = key_revoke(secrets, f"main-backend:v{current.current}", now=NOW, new_key=lambda: b"\x31" * 32)
    new_version = parse_keyring(result.secrets["keyring"]).services["main-backend"].current
    assert new_version == current.current + 1
    changed = install(cluster, result.secrets)
    assert set(changed) == {"main-backend", *VERIFIERS}
    for name in changed:  # the playbook restarts them all at once; here one after the other, then check
        cluster.restart(name)
    body, headers = signed_with(revoked_master, current.current)
    refused = httpx.post(
        cluster["npu-worker"].url + "/api/process", content=body, headers=headers, trust_env=False
    )
    assert refused.status_code == 401, refused.text
    assert health_keys(cluster, "main-backend")["signing"] == [f"main-backend:v{new_version}"]
    assert user_calls(cluster) == []
