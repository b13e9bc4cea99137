"""Both middlewares through rendered entry files, over real HTTP (uvicorn on loopback), with a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from tests.security import auth_apps
from tests.security.auth_support import AUDIT_FIELDS, MATRIX_FILE, ROOT, TEMPLATE, raw_http, serving
from tests.security.deployment import Deployment, Phase
from tests.support.redis_server import RedisServer, free_port, start_redis

from autobot.client.service_client import ServiceClient
from autobot.config import ListenConfig, RedisConfig, SecurityConfig, ServiceConfig
from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware
from autobot.middleware.service_auth_logging import ServiceAuthLoggingMiddleware
from autobot.security.audit import AuditLog
from autobot.security.entry import render_entry
from autobot.security.keyring import Keyring
from autobot.security.matrix import Matrix

BODY_MARKER = "body-marker-7f3a9c"


@pytest.fixture
def deploy(tmp_path: Path, key_root: Path, redis_server: RedisServer) -> Callable[..., Deployment]:
    def make(phase: Phase, redis_url: str | None = None, keys_dir: Path | None = None) -> Deployment:
        return Deployment(tmp_path / phase, key_root, phase, redis_url or redis_server.url, keys_dir)

    return make


def _client(keyrings: dict[str, Keyring], caller: str, base_url: str) -> ServiceClient:
    return ServiceClient(caller, keyrings[caller], {"npu-worker": base_url}, timeout=5.0, retries=0)


def _assert_audit_is_clean(text: str, keyrings: dict[str, Keyring], signatures: list[str]) -> None:
    assert BODY_MARKER not in text
    for ring in keyrings.values():
        for master in ring.masters.values():
            assert master.hex() not in text
        for versions in ring.pair_keys.values():
            for key in versions.values():
                assert key.hex() not in text
    for signature in signatures:
        assert signature not in text
    assert "signature=" not in text.lower()
    assert not re.search(r"[0-9a-f]{64}", text)


def test_rendered_entry_files_import_exactly_one_middleware(tmp_path: Path) -> None:
    for phase, wanted, other in [
        ("logging", "ServiceAuthLoggingMiddleware", "ServiceAuthEnforcementMiddleware"),
        ("enforcement", "ServiceAuthEnforcementMiddleware", "ServiceAuthLoggingMiddleware"),
    ]:
        text = render_entry(
            TEMPLATE,
            service_id="npu-worker",
            app_module="autobot.services.npu_worker",
            config_path="/etc/autobot/npu-worker/config.yml",
            service_auth_middleware=phase,  # type: ignore[arg-type]
        )
        assert wanted in text
        assert other not in text  # `grep -l` on the entry file tells the operator the phase
        assert "from autobot.services.npu_worker import create_app" in text
        assert 'load_config("/etc/autobot/npu-worker/config.yml")' in text
        compile(text, f"{phase}-asgi.py", "exec")
    # The plan's phase-1 rollback ("disable middleware"): no middleware class at all.
    text = render_entry(
        TEMPLATE,
        service_id="npu-worker",
        app_module="autobot.services.npu_worker",
        config_path="/etc/autobot/npu-worker/config.yml",
        service_auth_middleware="none",
    )
    assert "ServiceAuth" not in text
    assert "app = create_app(config)" in text
    compile(text, "none-asgi.py", "exec")
    with pytest.raises(ValueError, match="'logging', 'enforcement' or 'none'"):
        render_entry(
            TEMPLATE,
            service_id="npu-worker",
            app_module="m",
            config_path="/c",
            service_auth_middleware="off",  # type: ignore[arg-type]
        )


async def test_enforcement_entry_over_http(
    deploy: Callable[..., Deployment], keyrings: dict[str, Keyring]
) -> None:
    deployment = deploy("enforcement")
    app = deployment.app()
    assert isinstance(app, ServiceAuthEnforcementMiddleware)
    signatures: list[str] = []

    def keep_signature(request: httpx.Request) -> None:
        signatures.append(request.headers["signature"])

    async with serving(app) as base_url:
        main = _client(keyrings, "main-backend", base_url)
        ai = _client(keyrings, "ai-stack", base_url)
        async with main, ai, httpx.AsyncClient(base_url=base_url, trust_env=False) as plain:
            body = {"task": "embed", "text": BODY_MARKER}
            sent = json.dumps(body).encode()
            ok = await main.post("npu-worker", "/api/process", content=sent, params={"q": "a b/c"})
            assert ok.status_code == 200, ok.text
            echoed = ok.json()
            assert echoed["decision"] == [200, "ok", "main-backend"]
            assert echoed["query"] == {"q": "a b/c"}
            assert echoed["lifespan_started"] is True  # lifespan passed through to the app
            assert echoed["body_sha256"] == hashlib.sha256(sent).hexdigest()  # replayed intact

            unsigned = await plain.post("/api/process", json=body)
            assert unsigned.status_code == 401
            assert unsigned.json() == {"error": "unauthorized", "detail": "missing_header:x-service-id"}

            forbidden = await ai.request("npu-worker", "DELETE", "/api/process")
            assert forbidden.status_code == 403
            assert forbidden.json()["detail"] == "not_granted"

            public = await plain.get("/api/health")
            assert public.status_code == 200
            assert public.json()["decision"] == [200, "public_route", None]

            # A captured request replayed verbatim is refused.
            captured = main._build(
                main._client("npu-worker"), "npu-worker", "POST", "/api/process", "", None, b"{}", None
            )
            keep_signature(captured)
            first = await plain.send(captured)
            second = await plain.send(captured)
            assert (first.status_code, second.status_code) == (200, 401)
            assert second.json()["detail"] == "replayed_nonce"

        for target in [
            b"/api/process/../process",
            b"/api//process",
            b"/api%2Fprocess",
            b"/api%5Cprocess",
            b"/api/process%00",
            b"/api/%2E%2E/api/process",
            b"/api/health/..",
            b"/api/health%2f",
        ]:
            status, raw_body = await raw_http(base_url, target)
            assert status == 401, target
            assert json.loads(raw_body)["detail"] == "unsafe_path"

    lines = deployment.audit_lines()  # lifespan shutdown closed (and flushed) the audit log
    assert all(set(line) == AUDIT_FIELDS for line in lines)
    assert {line["phase"] for line in lines} == {"enforcement"}
    assert lines[0]["caller"] == "main-backend"
    assert lines[0]["decision"] == "allow"
    assert lines[0]["keyid"] == "main-backend:v1"
    assert lines[0]["path"] == "/api/process"
    assert lines[0]["time"].endswith("Z")
    by_reason = {line["reason"]: line for line in lines}
    assert by_reason["not_granted"]["caller"] == "ai-stack"
    assert by_reason["public_route"]["decision"] == "public"
    assert by_reason["public_route"]["route_kind"] == "public"
    assert by_reason["unsafe_path"]["status"] == 401
    _assert_audit_is_clean(deployment.audit.read_text(), keyrings, signatures)


async def test_logging_entry_passes_everything_and_audits(
    deploy: Callable[..., Deployment], keyrings: dict[str, Keyring]
) -> None:
    deployment = deploy("logging")
    app = deployment.app()
    assert isinstance(app, ServiceAuthLoggingMiddleware)
    async with (
        serving(app) as base_url,
        _client(keyrings, "main-backend", base_url) as main,
        httpx.AsyncClient(base_url=base_url, trust_env=False) as plain,
    ):
        signed = await main.post("npu-worker", "/api/process", json={"text": BODY_MARKER})
        assert signed.status_code == 200
        assert signed.json()["decision"] == [200, "ok", "main-backend"]
        unsigned = await plain.post("/api/process", content=BODY_MARKER, headers={"X-Service-ID": "ai-stack"})
        assert unsigned.status_code == 200  # logging phase: refused on paper only
        assert unsigned.json()["decision"] == [401, "missing_header:content-digest", "ai-stack"]
        assert unsigned.json()["body_len"] == len(BODY_MARKER)
    lines = deployment.audit_lines()
    assert [(x["decision"], x["status"], x["phase"], x["caller"]) for x in lines] == [
        ("allow", 200, "logging", "main-backend"),
        ("deny", 401, "logging", "ai-stack"),
    ]
    _assert_audit_is_clean(deployment.audit.read_text(), keyrings, [])


async def test_redis_down_enforcement_503_logging_passes_and_logs(
    deploy: Callable[..., Deployment], keyrings: dict[str, Keyring]
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for phase, expected in (("enforcement", 503), ("logging", 200)):
        deployment = deploy(phase, redis_url=dead)
        async with serving(deployment.app()) as base_url, _client(keyrings, "main-backend", base_url) as main:
            response = await main.post("npu-worker", "/api/process", json={"x": 1})
            assert response.status_code == expected, phase
            if phase == "enforcement":
                assert response.json()["detail"] == "replay_store_unavailable"
                assert response.headers["retry-after"] == "1"
            else:
                assert response.json()["decision"][:2] == [503, "replay_store_unavailable"]
        (line,) = deployment.audit_lines()
        assert (line["status"], line["reason"], line["phase"]) == (503, "replay_store_unavailable", phase)


async def test_redis_going_down_mid_run_fails_closed(
    deploy: Callable[..., Deployment], keyrings: dict[str, Keyring], tmp_path: Path
) -> None:
    own = start_redis(tmp_path / "own-redis")
    try:
        deployment = deploy("enforcement", redis_url=own.url)
        async with serving(deployment.app()) as base_url, _client(keyrings, "main-backend", base_url) as main:
            assert (await main.post("npu-worker", "/api/process", json={})).status_code == 200
            own.stop()
            assert (await main.post("npu-worker", "/api/process", json={})).status_code == 503
    finally:
        own.stop()


async def test_enforcement_does_not_start_without_keys_but_logging_does(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    missing = tmp_path / "no-keys"
    enforcement = deploy("enforcement", keys_dir=missing)
    # The real start command: uvicorn reports the failed lifespan start-up and the process exits non-zero.
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("autobot")),
        "serve",
        "npu-worker",
        "--config",
        str(enforcement.config),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode not in (0, None)
    assert b"does not exist (were the service keys deployed?)" in output
    async with (
        serving(deploy("logging", keys_dir=missing).app()) as base_url,
        httpx.AsyncClient(base_url=base_url, trust_env=False) as plain,
    ):
        response = await plain.post("/api/process", content=b"x")
        assert response.status_code == 200
        assert response.json()["decision"][:2] == [503, "auth_unavailable"]


@pytest.mark.parametrize("phase", ["enforcement", "logging"])
async def test_body_limit(
    phase: Phase, tmp_path: Path, keyrings: dict[str, Keyring], redis_client: Redis
) -> None:
    """Over the route's limit (the matrix gives npu-worker's /api/process 2 MiB): enforcement answers 413;
    logging still hands the app the whole body, in order."""
    audit = AuditLog.open(tmp_path / "audit.log")
    cls = ServiceAuthEnforcementMiddleware if phase == "enforcement" else ServiceAuthLoggingMiddleware
    inner = auth_apps.create_app(ServiceConfig(service_id="npu-worker", listen=ListenConfig(port=1)))
    app = cls(
        inner,
        service_id="npu-worker",
        keyring=keyrings["npu-worker"],
        matrix=Matrix.load(MATRIX_FILE, "npu-worker"),
        redis=redis_client,
        audit=audit,
    )
    big = bytes(range(256)) * 12 * 1024  # 3 MiB, arrives in several chunks
    try:
        async with serving(app) as base_url, _client(keyrings, "main-backend", base_url) as main:
            small = await main.post("npu-worker", "/api/process", content=b"x" * 1024)
            assert small.status_code == 200
            response = await main.post("npu-worker", "/api/process", content=big)
            if phase == "enforcement":
                assert response.status_code == 413
                assert response.json()["error"] == "payload_too_large"
            else:
                assert response.status_code == 200
                assert response.json()["body_sha256"] == hashlib.sha256(big).hexdigest()
        audit.flush()
        reasons = [json.loads(x)["reason"] for x in (tmp_path / "audit.log").read_text().splitlines()]
        assert reasons == ["ok", "body_too_large"]
    finally:
        audit.close()


async def test_websocket_handshake_to_a_service_route_is_refused(
    tmp_path: Path, keyrings: dict[str, Keyring], redis_client: Redis
) -> None:
    audit = AuditLog.open(tmp_path / "audit.log")
    inner = auth_apps.create_app(ServiceConfig(service_id="npu-worker", listen=ListenConfig(port=1)))
    app = ServiceAuthEnforcementMiddleware(
        inner,
        service_id="npu-worker",
        keyring=keyrings["npu-worker"],
        matrix=Matrix.load(MATRIX_FILE, "npu-worker"),
        redis=redis_client,
        audit=audit,
    )
    try:
        async with serving(app) as base_url:
            host, port = base_url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"GET /api/process HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
        assert status_line.split(b" ")[1] == b"403"
        audit.flush()
        (line,) = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        assert (line["method"], line["reason"], line["decision"]) == (
            "GET",
            "missing_header:x-service-id",
            "deny",
        )
    finally:
        audit.close()


@pytest.mark.parametrize(("skew", "ttl"), [(400, 600), (300, 599)])
async def test_nonce_lifetime_shorter_than_the_time_window_stops_enforcement(
    skew: int, ttl: int, tmp_path: Path, key_root: Path, redis_server: RedisServer
) -> None:
    """A request is acceptable for 2 x clock_skew_s; a nonce forgotten sooner lets it be replayed."""
    config = ServiceConfig(
        service_id="npu-worker",
        listen=ListenConfig(port=1),
        redis=RedisConfig(url=redis_server.url),
        security=SecurityConfig(
            keys_dir=key_root / "npu-worker",
            matrix_file=MATRIX_FILE,
            audit_log=tmp_path / "audit.log",
            clock_skew_s=skew,
            nonce_ttl_s=ttl,
        ),
    )
    app = ServiceAuthEnforcementMiddleware(auth_apps.create_app(config), config)
    try:
        assert await app.components(retry_now=True) is None
        assert app.last_error is not None
        assert "nonce_ttl_s" in app.last_error
    finally:
        await app.aclose()
