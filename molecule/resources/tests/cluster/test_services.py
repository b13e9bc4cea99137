"""The deployed services (roles python_service, frontend, release): units, releases, config, schema, calls."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from conftest import host_service

INSTALL = "/opt/autobot"  # autobot_install_dir
RELEASE_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-z-]+$")
MAX_EXPOSURE = 2.0


def _kind(host: Any, services: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    service_id = host_service(host, services)
    return service_id, services[service_id]


def _needs(host: Any, services: dict[str, Any], *kinds: str) -> tuple[str, dict[str, Any]]:
    service_id, spec = _kind(host, services)
    if spec["kind"] not in kinds:
        pytest.skip(f"{service_id} is not a {' or '.join(kinds)} service")
    return service_id, spec


def test_current_is_a_relative_link_to_a_release_with_its_manifest(
    host: Any, services: dict[str, Any]
) -> None:
    service_id, _ = _needs(host, services, "python", "nginx")
    link = host.file(f"{INSTALL}/current")
    assert link.is_symlink
    target = link.linked_to
    release = target.rsplit("/", 1)[1]
    assert RELEASE_ID.match(release), release
    assert host.check_output(f"readlink {INSTALL}/current") == f"releases/{release}", "the link is relative"
    manifest = json.loads(host.file(f"{target}/manifest.json").content_string)
    assert manifest["id"] == release
    assert manifest["name"] == ("frontend" if service_id == "frontend" else service_id)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["content_sha256"])
    assert manifest["commit"]


def test_python_units_run_as_the_service_account_behind_a_socket(
    host: Any, services: dict[str, Any], layout: dict[str, Any]
) -> None:
    _, spec = _needs(host, services, "python")
    unit = spec["unit"]
    for kind in ("socket", "service"):
        assert host.service(f"{unit}.{kind}").is_running, f"{unit}.{kind}"
        assert host.service(f"{unit}.{kind}").is_enabled, f"{unit}.{kind}"
    # The port is held by systemd (the socket unit); the service process runs as the service account.
    main_pid = host.check_output(f"systemctl show -p MainPID --value {unit}.service")
    assert host.check_output(f"stat -c %U /proc/{main_pid}") == layout["autobot_service_user"]
    assert f"{unit}.socket" in host.check_output(f"systemctl show -p TriggeredBy --value {unit}.service")


def test_python_units_are_hardened(host: Any, services: dict[str, Any]) -> None:
    _, spec = _needs(host, services, "python")
    out = host.check_output(f"systemd-analyze security {spec['unit']}.service --no-pager")
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))  # type: ignore[union-attr]
    print(f"systemd-analyze security {spec['unit']}.service: {score}")
    assert score <= MAX_EXPOSURE, out[-2000:]


def test_config_and_entry_file_owners_and_modes(
    host: Any, services: dict[str, Any], layout: dict[str, Any]
) -> None:
    service_id, _ = _needs(host, services, "python")
    group = layout["autobot_service_group"]
    base = f"{layout['autobot_config_dir']}/{service_id}"
    assert (
        host.file(f"{base}/config.yml").linked_to == host.file(f"{INSTALL}/current").linked_to + "/config.yml"
    )
    for path in (f"{INSTALL}/current/config.yml", f"{INSTALL}/current/matrix.yml", f"{base}/asgi.py"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", group, 0o640), path
    assert json.loads(host.file(f"{base}/service-auth.json").content_string)["phase"] == "logging"
    assert "ServiceAuthLoggingMiddleware" in host.file(f"{base}/asgi.py").content_string


def test_main_backend_created_its_schema(host: Any, services: dict[str, Any], layout: dict[str, Any]) -> None:
    service_id, _ = _needs(host, services, "python")
    if service_id != "main-backend":
        pytest.skip("only main-backend has the conversation-files database")
    db = f"{layout['autobot_state_dir']}/conversation_files.db"
    tables = host.check_output(
        f"sqlite3 {db} \"SELECT name FROM sqlite_master WHERE type='table' ORDER BY name\""
    )
    for table in (
        "conversation_files",
        "file_metadata",
        "session_file_associations",
        "file_access_log",
        "file_cleanup_queue",
    ):
        assert table in tables.split()
    assert host.file(db).user == layout["autobot_service_user"]


def _chat_on_main_backend(backend: Any, port: int, message: str) -> tuple[str, dict[str, Any]]:
    """A user's chat on main-backend's machine: a session issued to a cookie, then one turn."""
    base = f"http://127.0.0.1:{port}"
    jar = "/run/molecule-verify.cookies"
    curl = f"curl -sf -b {jar} -c {jar} -H 'content-type: application/json'"
    session = json.loads(backend.check_output(f"{curl} -X POST {base}/api/chat/sessions -d '{{}}'"))
    body = json.dumps({"message": message, "session_id": session["session_id"]})
    return session["session_id"], json.loads(
        backend.check_output(f"{curl} -X POST {base}/api/chat -d '{body}'")
    )


def test_a_chat_on_main_backend_is_answered_through_ai_stack(host: Any, services: dict[str, Any]) -> None:
    service_id, spec = _needs(host, services, "python")
    if service_id != "main-backend":
        pytest.skip("the chat enters the cluster on main-backend")
    session, reply = _chat_on_main_backend(host, spec["port"], "hello from molecule verify")
    assert reply["provider"] == "ai-stack"
    assert "hello from molecule verify" in reply["reply"]
    # The session is this client's: another client (no cookie) gets 404.
    url = f"http://127.0.0.1:{spec['port']}/api/chat/sessions/{session}/messages"
    assert host.run(f"curl -s -o /dev/null -w '%{{http_code}}' {url}").stdout == "404"


def test_ai_stack_audited_main_backends_signed_call(
    host: Any, services: dict[str, Any], layout: dict[str, Any], machine: Any
) -> None:
    service_id, _ = _needs(host, services, "python")
    if service_id != "ai-stack":
        pytest.skip("ai-stack receives main-backend's signed inference call")
    # testinfra orders tests host by host: make the call from here rather than rely on another host's test.
    _chat_on_main_backend(machine("autobot-main-backend"), services["main-backend"]["port"], "audited call")
    log = host.file(f"{layout['autobot_log_dir']}/service-auth-audit.log")
    # Readable by root and the service group only (0640 at most).
    assert (log.user, log.group) == (layout["autobot_service_user"], layout["autobot_service_group"])
    assert log.mode & 0o137 == 0, oct(log.mode)
    allowed: list[dict[str, Any]] = []
    for _ in range(50):  # the audit writer batches its lines (20 ms)
        lines = [json.loads(line) for line in log.content_string.splitlines() if line.strip()]
        allowed = [
            r
            for r in lines
            if r["caller"] == "main-backend" and r["path"] == "/api/inference" and r["decision"] == "allow"
        ]
        if allowed:
            break
        time.sleep(0.1)
    assert allowed, lines[-5:]
    assert allowed[-1]["keyid"] == "main-backend:v1"


def test_nginx_serves_the_ui_release_and_the_health_route(host: Any, services: dict[str, Any]) -> None:
    _, spec = _needs(host, services, "nginx")
    assert host.run("nginx -t").rc == 0
    port = spec["port"]
    headers = host.check_output(f"curl -sfI http://127.0.0.1:{port}/")
    assert "Content-Security-Policy: default-src 'self'" in headers
    assert "X-Content-Type-Options: nosniff" in headers
    assert json.loads(host.check_output(f"curl -sf http://127.0.0.1:{port}/healthz"))["status"] == "ok"
    release = json.loads(host.check_output(f"curl -sf http://127.0.0.1:{port}/release.json"))
    assert host.file(f"{INSTALL}/current").linked_to.endswith(release["id"])
    # The user API goes through to main-backend.
    models = json.loads(host.check_output(f"curl -sf http://127.0.0.1:{port}/api/models"))
    assert models["default"]
