"""The release mechanism on the deployed cluster, driven as an operator drives it (ansible-playbook):
a second release and rollbacks, a release that fails its health gate, a deploy stopped before the flip,
and bad input (a config the service refuses, a missing wheel, an unreachable machine, a schema too new)."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_playbook

NPU = "autobot-npu-worker"
BACKEND = "autobot-main-backend"
INSTALL = "/opt/autobot"
STOP_HOOK = REPO / "molecule" / "resources" / "deploy" / "stop-before-flip.yml"


def serving(host: Any) -> str:
    return str(host.check_output(f"readlink {INSTALL}/current")).removeprefix("releases/")


def releases(host: Any) -> list[str]:
    return sorted(host.check_output(f"ls {INSTALL}/releases").split())


def healthy(host: Any, port: int) -> bool:
    ready = host.run(f"curl -sf http://127.0.0.1:{port}/api/ready")
    return ready.rc == 0 and json.loads(ready.stdout)["status"] == "ready"


def output(result: Any) -> str:
    """What the run printed, with Ansible's line wrapping undone (messages are searched for phrases)."""
    return " ".join(str(result.stdout + result.stderr).split())


@pytest.fixture
def npu(machine: Any) -> Iterator[Any]:
    host = machine(NPU)
    yield host
    # Whatever a test did, npu-worker must end healthy on a release of its own.
    assert healthy(host, 8081), f"npu-worker is not healthy after the test (serving {serving(host)})"


def test_a_second_release_then_rollbacks_by_the_current_link(npu: Any) -> None:
    first = serving(npu)
    deployed = run_playbook("deploy-services.yml", "-e", "service=npu-worker", "-e", "release_force=true")
    assert deployed.returncode == 0, output(deployed)[-3000:]
    second = serving(npu)
    assert second > first, "release ids sort by time"
    assert healthy(npu, 8081)

    back = run_playbook("rollback-services.yml", "-e", "service=npu-worker")
    assert back.returncode == 0, output(back)[-3000:]
    assert serving(npu) == first
    assert f"now serves release {first}" in back.stdout
    assert healthy(npu, 8081)

    forward = run_playbook("rollback-services.yml", "-e", "service=npu-worker", "-e", f"release={second}")
    assert forward.returncode == 0, output(forward)[-3000:]
    assert serving(npu) == second

    unknown = run_playbook(
        "rollback-services.yml", "-e", "service=npu-worker", "-e", "release=20200101T000000Z-nope"
    )
    assert unknown.returncode != 0
    assert "no such release here" in output(unknown)
    assert serving(npu) == second


def test_a_release_failing_its_health_gate_flips_back_and_says_why(npu: Any) -> None:
    before, present = serving(npu), releases(npu)
    # Valid for the config model, fatal at run time: main-backend's Redis moved to a closed port.
    broken = run_playbook(
        "deploy-services.yml",
        "-e", "service=npu-worker",
        "-e", "release_force=true",
        "-e", "release_health_retries=5",
        "-e", json.dumps({"python_service_config_overrides": {"redis": {"url": "redis://127.0.0.1:1/0"}}}),
    )  # fmt: skip
    text = output(broken)
    assert broken.returncode != 0
    assert "autobot-npu-worker: release" in text
    assert "failed after the flip" in text
    assert f"Serving again: {before} (healthy)" in text
    assert serving(npu) == before
    assert releases(npu) == present, "the failed release is deleted"
    assert healthy(npu, 8081)


def test_a_service_stopped_by_its_start_limit_is_started_by_the_next_restart(npu: Any) -> None:
    """A crash loop makes systemd refuse every further start (start-limit-hit) until the failed state is
    cleared; a rollback (or a phase restore) must still bring the service up. A runtime drop-in lowers the
    limit to one start a minute, so two restarts reach it whatever the machine's speed, and the playbook's
    own restarts are held to it too."""
    before, unit = serving(npu), "autobot-npu-worker.service"
    dropin = f"/run/systemd/system/{unit}.d/zz-test-start-limit.conf"
    npu.check_output(f"mkdir -p {dropin.rsplit('/', 1)[0]}")
    npu.check_output(f"printf '[Unit]\\nStartLimitBurst=1\\nStartLimitIntervalSec=60\\n' > {dropin}")
    try:
        npu.check_output("systemctl daemon-reload")
        npu.run(f"systemctl restart {unit}")
        assert npu.run(f"systemctl restart {unit}").rc != 0, "the second start within a minute is refused"
        assert npu.check_output(f"systemctl show -p Result --value {unit}") == "start-limit-hit"
        back = run_playbook("rollback-services.yml", "-e", "service=npu-worker")
        assert back.returncode == 0, output(back)[-3000:]
        assert healthy(npu, 8081)
        forward = run_playbook("rollback-services.yml", "-e", "service=npu-worker", "-e", f"release={before}")
        assert forward.returncode == 0, output(forward)[-3000:]
        assert serving(npu) == before
    finally:
        npu.run(f"rm -f {dropin} && systemctl daemon-reload && systemctl reset-failed {unit}")
        npu.run(f"systemctl start {unit}")


def test_a_deploy_stopped_before_the_flip_leaves_the_live_release(npu: Any) -> None:
    before = serving(npu)
    stopped = run_playbook(
        "deploy-services.yml",
        "-e", "service=npu-worker",
        "-e", "release_force=true",
        "-e", f"release_before_flip_tasks={STOP_HOOK}",
    )  # fmt: skip
    assert stopped.returncode == 0, output(stopped)[-3000:]
    assert serving(npu) == before
    leftover = [r for r in releases(npu) if r > before]
    assert leftover, "the interrupted release was prepared but never flipped"
    assert healthy(npu, 8081)
    # The next deploy goes through; the unactivated release never serves.
    again = run_playbook("deploy-services.yml", "-e", "service=npu-worker", "-e", "release_force=true")
    assert again.returncode == 0, output(again)[-3000:]
    assert serving(npu) not in leftover


def test_a_config_the_service_refuses_changes_nothing(npu: Any) -> None:
    before, present = serving(npu), releases(npu)
    units = npu.check_output("sha256sum /etc/systemd/system/autobot-npu-worker.*")
    refused = run_playbook(
        "deploy-services.yml",
        "-e", "service=npu-worker",
        "-e", json.dumps({"python_service_config_overrides": {"listen": {"port": 70000}}}),
    )  # fmt: skip
    text = output(refused)
    assert refused.returncode != 0
    assert "would be refused by the service: listen.port" in text
    assert "Nothing was changed on the machine" in text
    assert (serving(npu), releases(npu)) == (before, present)
    assert npu.check_output("sha256sum /etc/systemd/system/autobot-npu-worker.*") == units


def test_a_missing_wheel_fails_before_the_flip(npu: Any, tmp_path: Path) -> None:
    build = sorted((REPO / ".cache" / "releases").glob("wheelhouse-*.tar"), key=lambda p: p.stat().st_mtime)[
        -1
    ]
    broken_tar = tmp_path / "wheelhouse-broken.tar"
    with tarfile.open(build) as source, tarfile.open(broken_tar, "w") as target:
        for member in source.getmembers():
            if not member.name.startswith("PyYAML") and not member.name.lower().startswith("pyyaml"):
                target.addfile(member, source.extractfile(member))
    with tarfile.open(build) as source:
        wheel = next(m.name for m in source.getmembers() if m.name.startswith("autobot-"))
    release_build = {
        "release_id": "20991231T235959Z-missingwheel",
        "commit": "test",
        "built_at": "2099-12-31T23:59:59Z",
        "wheelhouse": {"tar": str(broken_tar), "sha256": "e" * 64, "project_wheel": wheel, "wheels": []},
        "www": {"tar": "", "sha256": "0" * 64},
    }
    before, present = serving(npu), releases(npu)
    failed = run_playbook(
        "deploy-services.yml", "-e", "service=npu-worker", "-e", json.dumps({"release_build": release_build})
    )
    text = output(failed)
    assert failed.returncode != 0
    assert "failed before the flip" in text
    assert re.search(r"(?i)pyyaml", text), text[-2000:]
    assert (serving(npu), releases(npu)) == (before, present)
    assert not npu.file(f"{INSTALL}/venvs/{'e' * 16}").exists, "the unfinished virtualenv is removed"
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_an_unreachable_machine_fails_clearly_and_changes_nothing(npu: Any) -> None:
    before = serving(npu)
    unreachable = run_playbook("deploy-services.yml", "-e", "service=npu-worker", "-e", "ansible_port=1")
    text = output(unreachable)
    assert unreachable.returncode != 0
    assert "autobot-npu-worker" in text
    assert "UNREACHABLE" in text
    assert serving(npu) == before


def test_an_unknown_service_is_refused_before_anything_runs() -> None:
    refused = run_playbook("deploy-services.yml", "-e", "service=npu-wroker")
    assert refused.returncode != 0
    assert "service=npu-wroker is not deployable" in output(refused)


def test_main_backend_refuses_a_rollback_to_code_older_than_its_schema(machine: Any) -> None:
    backend = machine(BACKEND)
    db = "/var/lib/autobot/conversation_files.db"
    deployed = run_playbook("deploy-services.yml", "-e", "service=main-backend", "-e", "release_force=true")
    assert deployed.returncode == 0, output(deployed)[-3000:]
    current = serving(backend)
    version = backend.check_output(f"sqlite3 {db} 'PRAGMA user_version'")
    backend.check_output(f"sqlite3 {db} 'PRAGMA user_version = 99'")
    try:
        refused = run_playbook("rollback-services.yml", "-e", "service=main-backend")
    finally:
        backend.check_output(f"sqlite3 {db} 'PRAGMA user_version = {int(version)}'")
    text = output(refused)
    assert refused.returncode != 0
    assert "newer than this code knows" in text
    assert "A schema never goes back" in text
    assert serving(backend) == current, "refused before anything changed"
    assert healthy(backend, 8001)
