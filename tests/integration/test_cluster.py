"""The four Python services as real `autobot serve` processes in the enforcement phase, calling each other
signed over loopback, each with its deployed key directory and its own Redis ACL user from the matrix."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tests.integration.cluster import Cluster, running_cluster, wait_for_audit
from tests.security.auth_support import AUDIT_FIELDS
from tests.support.redis_server import RedisServer

from autobot.client.service_client import ServiceClient
from autobot.config import load_config
from autobot.security.keyring import Keyring
from autobot.security.signing import new_nonce, sign_request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), redis_server.url, phase="enforcement") as built:
        yield built


def _signing_client(cluster: Cluster, service: str) -> ServiceClient:
    """A ServiceClient exactly as `service` builds one: from its deployed config and key directory."""
    return ServiceClient.from_config(load_config(cluster[service].config_path), retries=0)


@pytest.fixture
async def as_main_backend(cluster: Cluster) -> AsyncIterator[ServiceClient]:
    client = _signing_client(cluster, "main-backend")
    yield client
    await client.aclose()


def assert_ai_stack_allowed(cluster: Cluster, path: str) -> None:
    """ai-stack verified main-backend's signed POST to `path` (enforcement phase) and allowed it."""
    allowed = wait_for_audit(
        cluster["ai-stack"].audit_log, caller="main-backend", path=path, decision="allow"
    )
    assert (allowed["keyid"], allowed["phase"], allowed["route_kind"], allowed["method"]) == (
        "main-backend:v1",
        "enforcement",
        "service",
        "POST",
    )


async def test_chat_goes_through_ai_stack_signed(cluster: Cluster) -> None:
    backend = cluster["main-backend"]
    async with httpx.AsyncClient(base_url=backend.url, timeout=20, trust_env=False) as user:
        created = await user.post("/api/chat/sessions", json={})
        assert created.status_code == 201, created.text
        session = created.json()["session_id"]
        first = await user.post("/api/chat", json={"session_id": session, "message": "Hello cluster"})
        assert first.status_code == 200, first.text
        second = await user.post("/api/chat", json={"session_id": session, "message": "And again"})
        history = await user.get(f"/api/chat/sessions/{session}/messages")
    reply = first.json()
    # The reply was made by ai-stack's offline stand-in and came back through the ai-stack provider.
    assert reply["reply"].startswith("[offline-echo]")
    assert "Hello cluster" in reply["reply"]
    assert reply["provider"] == "ai-stack"
    assert second.json()["history_used"] == 2
    assert [m["role"] for m in history.json()["messages"]] == ["user", "assistant", "user", "assistant"]

    # ai-stack verified and allowed main-backend's signed call; the user's call was public on main-backend.
    assert_ai_stack_allowed(cluster, "/api/inference")
    wait_for_audit(backend.audit_log, path="/api/chat", decision="public", caller=None)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each server-sent event, as it arrives."""
    event: str | None = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event is not None:
            yield event, json.loads(line.removeprefix("data: "))
            event = None


async def test_chat_stream_arrives_chunk_by_chunk_through_ai_stack_signed(cluster: Cluster) -> None:
    backend = cluster["main-backend"]
    async with httpx.AsyncClient(base_url=backend.url, timeout=20, trust_env=False) as user:
        session = (await user.post("/api/chat/sessions", json={})).json()["session_id"]
        body = {"session_id": session, "message": "Stream through the cluster"}
        async with user.stream("POST", "/api/chat/stream", json=body) as response:
            assert response.status_code == 200
            events = [event async for event in sse_events(response)]
    chunks = [data["text"] for kind, data in events if kind == "chunk"]
    # ai-stack's offline stand-in sends a word at a time; each arrives at the user as its own event.
    assert len(chunks) > 1, events
    kind, done = events[-1]
    assert kind == "done"
    assert done["reply"] == "".join(chunks)
    assert done["reply"].startswith("[offline-echo]")
    assert "Stream through the cluster" in done["reply"]
    assert_ai_stack_allowed(cluster, "/api/inference/stream")


async def test_ai_stack_dying_mid_stream_ends_the_users_stream_with_an_error(cluster: Cluster) -> None:
    ai_stack = cluster["ai-stack"]
    events: list[tuple[str, dict[str, Any]]] = []
    user = httpx.AsyncClient(base_url=cluster["main-backend"].url, timeout=20, trust_env=False)
    session = (await user.post("/api/chat/sessions", json={})).json()["session_id"]
    try:
        async with user.stream(
            "POST", "/api/chat/stream", json={"session_id": session, "message": "Hi"}
        ) as response:
            async for event in sse_events(response):
                events.append(event)
                if len(events) == 1:
                    assert ai_stack.process is not None
                    ai_stack.process.kill()  # SIGKILL by PID: no graceful end of the stream in flight
                    ai_stack.process.wait()
        history = (await user.get(f"/api/chat/sessions/{session}/messages")).json()
    finally:
        cluster.start("ai-stack")
    assert events[0][0] == "chunk"
    kind, error = events[-1]
    assert (kind, error["error"]) == ("error", "llm_unavailable"), events[-3:]
    assert not [e for e in events if e[0] == "done"]
    # Nothing partial is kept: the user's message, no reply.
    assert [m["role"] for m in history["messages"]] == ["user"]

    # ai-stack is back (same port, same keys) and main-backend streams through it again.
    try:
        again_body = {"session_id": session, "message": "Again"}
        async with user.stream("POST", "/api/chat/stream", json=again_body) as again:
            assert [kind async for kind, _ in sse_events(again)][-1] == "done"
    finally:
        await user.aclose()


async def test_main_backend_calls_npu_worker_signed(cluster: Cluster, as_main_backend: ServiceClient) -> None:
    response = await as_main_backend.post(
        "npu-worker", "/api/process", json={"texts": ["signed call", "from main-backend"], "dimensions": 16}
    )
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 2
    assert len(response.json()["results"][0]) == 16
    wait_for_audit(
        cluster["npu-worker"].audit_log, caller="main-backend", path="/api/process", decision="allow"
    )


async def test_main_backend_manages_browser_sessions_signed(as_main_backend: ServiceClient) -> None:
    created = await as_main_backend.post(
        "browser-service", "/api/sessions", json={"url": "https://example.org/"}
    )
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert created.json()["state"] == "created"

    fetched = await as_main_backend.get("browser-service", f"/api/sessions/{sid}")
    listed = await as_main_backend.get("browser-service", "/api/sessions")
    deleted = await as_main_backend.delete("browser-service", f"/api/sessions/{sid}")
    gone = await as_main_backend.get("browser-service", f"/api/sessions/{sid}")
    assert fetched.json()["url"] == "https://example.org/"
    assert sid in [s["id"] for s in listed.json()["sessions"]]
    assert (deleted.status_code, gone.status_code) == (204, 404)


async def test_user_tool_routes_reach_npu_worker_and_browser_service_signed(cluster: Cluster) -> None:
    """A user's request to main-backend becomes main-backend's signed call to the other service."""
    backend = cluster["main-backend"]
    async with httpx.AsyncClient(base_url=backend.url, timeout=20, trust_env=False) as user:
        processed = await user.post(
            "/api/tools/process", json={"task": "digest", "texts": ["from a user", "through main-backend"]}
        )
        created = await user.post("/api/tools/browser-sessions", json={"url": "https://example.org/docs"})
        sid = created.json().get("id", "")
        fetched = await user.get(f"/api/tools/browser-sessions/{sid}")
        deleted = await user.delete(f"/api/tools/browser-sessions/{sid}")
        gone = await user.get(f"/api/tools/browser-sessions/{sid}")
        invalid = await user.post("/api/tools/process", json={"texts": []})
        malformed = await user.post("/api/tools/process", content=b"{not json")
        bad_id = await user.get("/api/tools/browser-sessions/..%2Fadmin")
    assert processed.status_code == 200, processed.text
    assert processed.json()["count"] == 2
    assert (created.status_code, fetched.status_code, deleted.status_code, gone.status_code) == (
        201,
        200,
        204,
        404,
    )
    assert fetched.json()["url"] == "https://example.org/docs"
    # The callee's own validation reaches the user unchanged; main-backend's is its own.
    assert invalid.status_code == 422
    assert malformed.status_code == 400
    assert bad_id.status_code in (401, 404, 422)
    wait_for_audit(
        cluster["npu-worker"].audit_log, caller="main-backend", path="/api/process", decision="allow"
    )
    wait_for_audit(
        cluster["browser-service"].audit_log, caller="main-backend", path="/api/sessions", decision="allow"
    )
    wait_for_audit(backend.audit_log, path="/api/tools/process", decision="public", caller=None)


async def test_a_callee_that_refuses_main_backend_is_a_502_not_the_users_fault() -> None:
    from autobot.services.http.errors import ApiError
    from autobot.services.main_backend.tools import relay

    for status in (401, 403):
        with pytest.raises(ApiError) as refused:
            relay("npu-worker", status, b'{"error":"unauthorized","detail":"bad signature"}')
        assert (refused.value.status_code, refused.value.code) == (502, "service_refused")
    with pytest.raises(ApiError) as garbled:
        relay("npu-worker", 200, b"<html>")
    assert garbled.value.status_code == 502
    assert relay("browser-service", 204, b"").status_code == 204


async def test_unsigned_call_is_refused_and_audited(cluster: Cluster) -> None:
    npu = cluster["npu-worker"]
    async with httpx.AsyncClient(base_url=npu.url, trust_env=False) as anyone:
        refused = await anyone.post("/api/process", json={"texts": ["no signature"]})
        health = await anyone.get("/api/health")
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    assert health.status_code == 200  # public in the matrix
    record = wait_for_audit(npu.audit_log, path="/api/process", decision="deny", caller=None)
    assert (record["status"], record["phase"]) == (401, "enforcement")
    assert record["reason"].startswith("missing_header")


async def test_granted_caller_on_a_route_not_granted_is_403(
    cluster: Cluster, as_main_backend: ServiceClient
) -> None:
    wrong_method = await as_main_backend.delete("npu-worker", "/api/process")
    not_granted = await as_main_backend.get("ai-stack", "/api/admin/keys")
    assert wrong_method.status_code == 403, wrong_method.text
    assert not_granted.status_code == 403, not_granted.text
    record = wait_for_audit(cluster["ai-stack"].audit_log, path="/api/admin/keys", caller="main-backend")
    assert (record["decision"], record["reason"].split(":")[0]) == ("deny", "not_granted")


async def test_service_that_is_no_caller_cannot_authenticate(cluster: Cluster) -> None:
    """browser-service has no grant on npu-worker, so npu-worker holds no pair key for it: 401, not 403."""
    keyring = Keyring.load_dir(cluster["browser-service"].keys_dir, "browser-service")
    # Its config has no npu-worker peer (the matrix gives it no route there), so the URL is given here.
    async with ServiceClient("browser-service", keyring, {"npu-worker": cluster["npu-worker"].url}) as client:
        response = await client.post("npu-worker", "/api/process", json={"texts": ["x"]})
    assert response.status_code == 401
    record = wait_for_audit(cluster["npu-worker"].audit_log, caller="browser-service")
    assert record["decision"] == "deny"


def test_replayed_request_is_refused(cluster: Cluster) -> None:
    npu = cluster["npu-worker"]
    keyring = Keyring.load_dir(cluster["main-backend"].keys_dir, "main-backend")
    key_id, key = keyring.signing_key("npu-worker")
    body = b'{"texts": ["replay me"]}'
    signed = sign_request(
        key=key,
        key_id=key_id,
        method="POST",
        raw_path=b"/api/process",
        query_string=b"",
        body=body,
        created=int(time.time()),
        nonce=new_nonce(),
    )
    headers = {**signed.as_dict(), "content-type": "application/json"}
    with httpx.Client(base_url=npu.url, trust_env=False) as client:
        first = client.post("/api/process", content=body, headers=headers)
        again = client.post("/api/process", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert again.status_code == 401
    record = wait_for_audit(npu.audit_log, caller="main-backend", method="POST", decision="deny")
    assert record["reason"].startswith("replayed_nonce")


async def test_redis_commands_stay_inside_each_acl(
    cluster: Cluster, redis_server: RedisServer, as_main_backend: ServiceClient
) -> None:
    """Every service runs as its own ACL user with the matrix's rules; Redis logs no denial for any."""
    # Make each service use Redis (its data and its replay store) before looking.
    async with httpx.AsyncClient(base_url=cluster["main-backend"].url, timeout=20, trust_env=False) as user:
        session = (await user.post("/api/chat/sessions", json={})).json()["session_id"]
        assert (
            await user.post("/api/chat", json={"session_id": session, "message": "hi"})
        ).status_code == 200
        assert (await user.get("/api/chat/sessions")).json()["sessions"][0]["message_count"] == 2
        assert (await user.delete(f"/api/chat/sessions/{session}")).status_code == 200
    assert (
        await as_main_backend.post("npu-worker", "/api/process", json={"texts": ["a"]})
    ).status_code == 200
    assert (await as_main_backend.get("ai-stack", "/api/models")).status_code == 200
    assert (await as_main_backend.get("browser-service", "/api/sessions")).status_code == 200

    users = {user for user, _ in cluster.redis_users.values()}
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as admin:
        denials = [entry for entry in admin.acl_log() if entry.get("username") in users]
        connected = {c.get("user") for c in admin.client_list()}
    assert denials == []
    assert users <= connected  # the services really are connected as those users


def test_audit_logs_hold_decisions_and_no_key_material(cluster: Cluster) -> None:
    secrets = cluster.secrets()
    for name, svc in cluster.services.items():
        records = svc.audit_records()
        assert records, f"{name} wrote no audit record"
        for record in records:
            assert set(record) >= AUDIT_FIELDS, record
            assert not {"signature", "signature_input", "key", "body", "content_digest"} & set(record), record
            assert record["callee"] == name
        for file in (svc.audit_log, svc.output_log, svc.config_path, svc.entry_path):
            text = file.read_text()
            assert not [s for s in secrets if s in text], f"a key or password in {file}"
    # And the keys dirs hold exactly what the matrix lets each machine have (no other service's master).
    assert sorted(p.name for p in cluster["npu-worker"].keys_dir.iterdir()) == [
        "master.v1.key",
        "pair.ai-stack.v1.key",
        "pair.main-backend.v1.key",
    ]
    assert sorted(p.name for p in cluster["main-backend"].keys_dir.iterdir()) == ["master.v1.key"]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_key_files_are_private(cluster: Cluster) -> None:
    for svc in cluster.services.values():
        assert _mode(svc.keys_dir) == 0o750
        assert all(_mode(p) == 0o640 for p in svc.keys_dir.iterdir())
