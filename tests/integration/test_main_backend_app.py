"""The main-backend app in-process (httpx ASGITransport, real lifespan), on real Redis and real SQLite."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.routing import APIRoute
from test_chat_support import (
    app_client,
    backend_client,
    backend_config,
    dedicated_redis,
    new_session,
    parse_sse,
    transcript_messages,
)
from tests.support.redis_server import RedisServer
from tests.unit.llm_runtime_fakes import Script, running_fake_llm_runtime

from autobot.config import ConfigError, LLMConfig
from autobot.context import ContextWindowManager, ModelRegistry
from autobot.services.main_backend import MAX_MESSAGE_CHARS, create_app

PLAN_TABLES = {
    "conversation_files",
    "file_metadata",
    "session_file_associations",
    "file_access_log",
    "file_cleanup_queue",
}


@pytest.fixture
async def client(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    # redis_client flushes the shared server's database first.
    async with backend_client(tmp_path, redis_server.url) as c:
        yield c


@pytest.fixture(scope="module")
def windows() -> ContextWindowManager:
    return ContextWindowManager(ModelRegistry.load())


def test_routes_are_exactly_the_public_routes_of_the_service_matrix(
    tmp_path: Path, services_matrix_file: Path
) -> None:
    matrix = yaml.safe_load(services_matrix_file.read_text(encoding="utf-8"))
    declared = {
        (method, rule["path"])
        for rule in matrix["autobot_services"]["main-backend"]["public"]
        for method in rule["methods"]
    }
    app = create_app(backend_config(tmp_path, "redis://127.0.0.1:1/0"))
    served = set()
    for route in app.routes:
        assert isinstance(route, APIRoute), f"unexpected non-API route {route}"
        pattern = "/".join("*" if part.startswith("{") else part for part in route.path.split("/"))
        served |= {(method, pattern) for method in route.methods}
    assert served == declared


async def test_schema_is_created_on_first_start_and_the_first_upload_works(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    db = tmp_path / "data" / "conversation_files.db"
    app = create_app(backend_config(tmp_path, redis_server.url))
    assert not db.exists()  # creating the app touches nothing
    async with backend_client(tmp_path, redis_server.url) as client:
        with sqlite3.connect(db) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables >= PLAN_TABLES
        first = await new_session(client)
        response = await client.post(
            f"/api/sessions/{first}/files", files={"file": ("notes.txt", b"first upload", "text/plain")}
        )
        assert response.status_code == 201, response.text
    assert app is not None


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    health = await client.get("/api/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = await client.get("/api/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"redis": "ok", "database": "ok", "transcripts": "ok"}


async def test_chat_returns_the_reply_and_its_accounting(client: httpx.AsyncClient) -> None:
    s1 = await new_session(client)
    response = await client.post("/api/chat", json={"message": "hello", "session_id": s1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["session_id"] == s1
    assert body["reply"].startswith("[offline-echo]")
    assert {"model", "message_id", "reply_id", "prompt_tokens", "max_output_tokens", "history_used"} <= set(
        body
    )
    second = (await client.post("/api/chat", json={"message": "again", "session_id": s1})).json()
    assert second["history_used"] == 2


async def test_chat_with_a_chosen_model(client: httpx.AsyncClient, windows: ContextWindowManager) -> None:
    response = await client.post(
        "/api/chat", json={"message": "hi", "session_id": await new_session(client), "model": "mistral:7b"}
    )
    assert response.json()["model"] == "mistral:7b"
    assert response.json()["max_output_tokens"] == windows.spec("mistral:7b").max_output_tokens


async def test_chat_stream_sends_one_event_per_chunk_and_a_final_done(client: httpx.AsyncClient) -> None:
    st = await new_session(client)
    async with client.stream("POST", "/api/chat/stream", json={"message": "stream", "session_id": st}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join([chunk async for chunk in r.aiter_text()])
    events = parse_sse(raw)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert set(kinds[:-1]) == {"chunk"}
    assert len(kinds) > 3
    done = events[-1][1]
    assert "".join(data["text"] for kind, data in events if kind == "chunk") == done["reply"]
    history = (await client.get(f"/api/chat/sessions/{st}/messages")).json()
    assert [m["content"] for m in history["messages"]] == ["stream", done["reply"]]


async def test_a_stream_that_fails_midway_ends_with_an_error_event_in_the_json_error_shape(
    tmp_path: Path, redis_server: RedisServer, redis_client: Any
) -> None:
    with running_fake_llm_runtime() as runtime:
        runtime.script = Script(error_after_chunks=1)
        config = backend_config(tmp_path, redis_server.url).model_copy(
            update={"llm": LLMConfig(provider="ollama", base_url=runtime.url)}
        )
        async with app_client(create_app(config)) as client:
            body = {"message": "stream", "session_id": await new_session(client)}
            async with client.stream("POST", "/api/chat/stream", json=body) as r:
                assert r.status_code == 200  # the headers were out before the model failed
                raw = "".join([chunk async for chunk in r.aiter_text()])
    events = parse_sse(raw)
    assert [kind for kind, _ in events] == ["chunk", "error"]
    error = events[-1][1]
    assert set(error) == {"error", "detail"}
    assert error["error"] == "llm_error"
    assert error["detail"].startswith("the language model failed: ")
    assert "ran out of memory" in error["detail"]


async def test_messages_are_windowed_for_the_session_model_and_paginated(
    client: httpx.AsyncClient, windows: ContextWindowManager
) -> None:
    model = "llama-3.2-3b-instruct"
    p = await new_session(client)
    for turn in range(20):
        r = await client.post("/api/chat", json={"message": f"t{turn}", "session_id": p, "model": model})
        assert r.status_code == 200
    default = (await client.get(f"/api/chat/sessions/{p}/messages")).json()
    assert default["model"] == model
    assert default["limit"] == windows.fetch_limit(model)
    assert len(default["messages"]) == windows.fetch_limit(model)
    assert default["total"] == 40
    assert default["messages"][-1]["seq"] == 40
    page = (await client.get(f"/api/chat/sessions/{p}/messages", params={"limit": 4, "before": 37})).json()
    assert [m["seq"] for m in page["messages"]] == [33, 34, 35, 36]
    assert page["next_before"] == 33
    assert page["messages"][0]["content"] == "t16"
    capped = (await client.get(f"/api/chat/sessions/{p}/messages", params={"limit": 10**6})).json()
    assert capped["limit"] < 10**6
    assert len(capped["messages"]) == 40
    bad = await client.get(f"/api/chat/sessions/{p}/messages", params={"before": 0})
    assert bad.status_code == 422


async def test_models_lists_the_registry(client: httpx.AsyncClient, windows: ContextWindowManager) -> None:
    body = (await client.get("/api/models")).json()
    assert body["default"] == windows.registry.default_name
    assert [m["name"] for m in body["models"]] == list(windows.registry.names())
    for entry in body["models"]:
        spec = windows.spec(entry["name"])
        assert entry["message_limit"] == spec.message_limit
        assert entry["context_window_tokens"] == spec.context_window_tokens
        assert entry["fetch_limit"] == windows.fetch_limit(spec)


async def test_file_lifecycle(client: httpx.AsyncClient) -> None:
    content = "résumé, naïve\n".encode() * 10
    f1, other = await new_session(client), await new_session(client)
    up = await client.post(
        f"/api/sessions/{f1}/files",
        files={"file": ("my cv é.txt", content, "text/plain")},
        data={"uploaded_by": "alice", "message_id": "m-1"},
    )
    assert up.status_code == 201, up.text
    record = up.json()
    file_id = record["file_id"]
    assert record["file_size"] == len(content)
    assert record["uploaded_by"] == "alice"
    assert "file_path" not in record

    listed = (await client.get(f"/api/sessions/{f1}/files")).json()
    assert [f["file_id"] for f in listed["files"]] == [file_id]

    download = await client.get(f"/api/sessions/{f1}/files/{file_id}")
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"].startswith("text/plain")
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"my cv ?.txt\"; filename*=UTF-8''my%20cv%20%C3%A9.txt"
    )

    summary = (await client.get(f"/api/sessions/{f1}/files-summary")).json()
    assert (summary["file_count"], summary["total_size"]) == (1, len(content))
    stats = (await client.get("/api/files/stats")).json()
    assert stats["active_files"] == 1

    assert (await client.get(f"/api/sessions/{other}/files/{file_id}")).status_code == 404
    assert (await client.delete(f"/api/sessions/{other}/files/{file_id}")).status_code == 404

    deleted = await client.delete(f"/api/sessions/{f1}/files/{file_id}")
    assert deleted.json() == {"file_id": file_id, "deleted": True, "already_deleted": False}
    again = await client.delete(f"/api/sessions/{f1}/files/{file_id}")
    assert again.json()["already_deleted"] is True
    gone = await client.get(f"/api/sessions/{f1}/files/{file_id}")
    assert gone.status_code == 410
    assert gone.json()["error"] == "file_deleted"
    assert (await client.get(f"/api/sessions/{f1}/files")).json()["files"] == []
    unknown = await client.get(f"/api/sessions/{f1}/files/00000000-0000-0000-0000-000000000000")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "file_not_found"


async def test_oversize_uploads_are_413(tmp_path: Path, redis_server: RedisServer) -> None:
    async with backend_client(tmp_path, redis_server.url, max_upload_bytes=1000) as client:
        u = await new_session(client)
        just_over = await client.post(f"/api/sessions/{u}/files", files={"file": ("a.bin", b"x" * 1001)})
        assert just_over.status_code == 413
        assert just_over.json()["error"] == "file_too_large"
        assert just_over.json()["limit_bytes"] == 1000
        huge = await client.post(f"/api/sessions/{u}/files", files={"file": ("b.bin", b"x" * 500_000)})
        assert huge.status_code == 413
        assert huge.json()["error"] == "payload_too_large"
        exact = await client.post(f"/api/sessions/{u}/files", files={"file": ("c.bin", b"x" * 1000)})
        assert exact.status_code == 201
        assert [
            f["original_filename"] for f in (await client.get(f"/api/sessions/{u}/files")).json()["files"]
        ] == ["c.bin"]


async def test_chunked_oversize_body_is_413_too(tmp_path: Path, redis_server: RedisServer) -> None:
    async def body() -> AsyncIterator[bytes]:
        # A well-formed multipart upload, streamed without Content-Length: the middleware must count.
        yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 10_000
        yield b"\r\n--zz--\r\n"

    async with backend_client(tmp_path, redis_server.url, max_upload_bytes=1000) as client:
        r = await client.post(
            f"/api/sessions/{await new_session(client)}/files",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"  # stopped while streaming, not after spooling


@pytest.mark.parametrize(
    ("request_kwargs", "status", "error", "mentions"),
    [
        (
            {"content": b'{"message": "hi", "session_id": ', "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
            "not valid JSON",
        ),
        (
            {"json": {"message": "x" * (MAX_MESSAGE_CHARS + 1), "session_id": "s"}},
            422,
            "invalid_request",
            "body.message",
        ),
        ({"json": {"message": "", "session_id": "s"}}, 422, "invalid_request", "body.message"),
        ({"json": {"message": "   ", "session_id": "s"}}, 422, "invalid_request", "empty"),
        ({"json": {"message": "hi", "session_id": "../../etc"}}, 422, "invalid_request", "session id"),
        ({"json": {"message": "hi"}}, 422, "invalid_request", "body.session_id"),
        (
            {"json": {"message": "hi", "session_id": "s", "temperature": 2}},
            422,
            "invalid_request",
            "body.temperature",
        ),
        ({"json": ["not", "an", "object"]}, 422, "invalid_request", "body"),
    ],
)
async def test_bad_chat_requests_get_clear_4xx_json(
    client: httpx.AsyncClient, request_kwargs: dict[str, Any], status: int, error: str, mentions: str
) -> None:
    body = request_kwargs.get("json")
    if isinstance(body, dict) and body.get("session_id") == "s":
        # "s" stands for a session of this client's own: the request is refused for what it says, not whose.
        request_kwargs = {**request_kwargs, "json": {**body, "session_id": await new_session(client)}}
    for path in ("/api/chat", "/api/chat/stream"):
        response = await client.post(path, **request_kwargs)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"] == error
        assert mentions in body["detail"]


async def test_bad_session_ids_in_paths_are_422(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/api/chat/sessions/bad*id/messages"),
        ("GET", "/api/sessions/bad*id/files"),
        ("GET", "/api/sessions/bad*id/files-summary"),
        ("GET", "/api/sessions/bad*id/files/abc"),
        ("DELETE", "/api/sessions/bad*id/files/abc"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["error"] == "invalid_session_id"


async def test_a_json_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = json.dumps({"message": "x" * (8 * MAX_MESSAGE_CHARS), "session_id": "s"})
    response = await client.post("/api/chat", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_context_too_large_is_413_with_the_numbers(
    client: httpx.AsyncClient, windows: ContextWindowManager
) -> None:
    spec = windows.spec("phi3:mini")
    message = "word " * (spec.context_window_tokens * 2)
    response = await client.post(
        "/api/chat", json={"message": message, "session_id": await new_session(client), "model": "phi3:mini"}
    )
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "context_too_large"
    assert body["model"] == "phi3:mini"
    assert body["available_tokens"] == spec.prompt_token_budget
    assert body["needed_tokens"] > body["available_tokens"]
    assert body["context_window_tokens"] == spec.context_window_tokens


async def test_unknown_routes_and_methods_are_json_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = await client.put("/api/chat", json={})
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert (await client.get("/docs")).status_code == 404


async def test_50_concurrent_chat_requests(client: httpx.AsyncClient, tmp_path: Path) -> None:
    c = [await new_session(client) for _ in range(10)]
    responses = await asyncio.gather(
        *(client.post("/api/chat", json={"message": f"m{i}", "session_id": c[i % 10]}) for i in range(50))
    )
    assert [r.status_code for r in responses] == [200] * 50
    for i in range(10):
        assert len(transcript_messages(tmp_path / "data" / "transcripts", c[i])) == 10


async def test_redis_down_is_503_while_health_stays_up_and_the_message_is_kept(tmp_path: Path) -> None:
    with dedicated_redis(tmp_path / "redis") as server:
        async with backend_client(tmp_path, server.url) as client:
            o = await new_session(client)
            assert (
                await client.post("/api/chat", json={"message": "before", "session_id": o})
            ).status_code == 200
            server.stop()
            chat = await client.post("/api/chat", json={"message": "during", "session_id": o})
            assert chat.status_code == 503
            body = chat.json()
            assert body["error"] == "history_unavailable"
            assert "Redis" in body["detail"]
            assert "saved" in body["detail"]
            stream = await client.post("/api/chat/stream", json={"message": "streamed", "session_id": o})
            assert stream.status_code == 503
            read = await client.get(f"/api/chat/sessions/{o}/messages")
            assert read.status_code == 503
            assert "saved" not in read.json()["detail"]  # a read saves nothing and must not claim to
            assert (await client.get("/api/health")).status_code == 200
            ready = await client.get("/api/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"].startswith("failed")
            assert ready.json()["checks"]["database"] == "ok"
            assert "redis" in ready.json()["detail"]
    messages = transcript_messages(tmp_path / "data" / "transcripts", o)
    assert [m["content"] for m in messages][-2:] == ["during", "streamed"]
    assert body["saved_message_ids"] == [messages[-2]["id"]]


async def test_the_ai_stack_provider_is_wired_from_the_service_config(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = backend_config(tmp_path, redis_server.url).model_copy(
        update={"llm": LLMConfig(provider="ai-stack")}
    )
    app = create_app(config)
    # No peers['ai-stack'] in this config: the start must fail and say what is missing.
    with pytest.raises(ConfigError, match=r"peers\['ai-stack'\]"):
        async with app.router.lifespan_context(app):
            pass
