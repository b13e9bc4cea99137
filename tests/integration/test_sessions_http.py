"""Sessions that belong to someone (issue 15), over real HTTP: main-backend under uvicorn on a loopback
socket, real Redis, real SQLite and transcript files, and raw requests (tests/support/raw_http.py: every
header, the cookie included, is written by the test).

Peers: a request from 127.0.0.1 is a browser; one from 127.0.0.2 is "the frontend machine", the only peer the
config trusts to name a user in X-Autobot-User.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from test_chat_support import backend_config, dedicated_redis, parse_sse, transcript_messages
from tests.support.http_server import serving
from tests.support.raw_http import (
    RawResponse,
    multipart,
    raw_request,
    set_cookie_attributes,
    set_cookie_value,
)
from tests.support.redis_server import RedisServer
from tests.unit.llm_runtime_fakes import Script, running_fake_llm_runtime

from autobot.config import LLMConfig, ServiceConfig
from autobot.services.main_backend import create_app
from autobot.sessions import ids

FRONTEND = "127.0.0.2"  # the trusted proxy
BROWSER = "127.0.0.1"
IDENTITY = {"header": "X-Autobot-User", "trusted_proxies": [FRONTEND]}


@dataclass
class Backend:
    url: str
    data: Path
    redis: Redis

    async def call(
        self,
        method: str,
        path: str,
        *,
        client: Client | None = None,
        peer: str = BROWSER,
        headers: list[tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> RawResponse:
        cookie = f"autobot_client={client.token}" if client is not None and client.token else None
        sent = list(headers or [])
        if client is not None and client.user is not None:
            sent.append(("X-Autobot-User", client.user))
            peer = FRONTEND
        return await raw_request(
            self.url, method, path, cookie=cookie, headers=sent, local_address=peer, **kwargs
        )


@dataclass
class Client:
    """One browser (its cookie) or one logged-in user (the header the frontend's nginx sets)."""

    token: str | None = None
    user: str | None = None

    async def new_session(self, backend: Backend) -> str:
        created = await backend.call("POST", "/api/chat/sessions", client=self, json_body={})
        assert created.status == 201, created.body
        issued = set_cookie_value(created)
        if issued is not None:
            self.token = issued
        session_id = created.json()["session_id"]
        assert isinstance(session_id, str)
        return session_id


@contextlib.asynccontextmanager
async def serve(config: ServiceConfig, redis_url: str) -> AsyncIterator[Backend]:
    client = Redis.from_url(redis_url)
    try:
        async with serving(create_app(config)) as url:
            assert config.backend is not None
            yield Backend(url, config.backend.transcripts_dir.parent, client)
    finally:
        await client.aclose()


@pytest.fixture
async def backend(tmp_path: Path, redis_server: RedisServer, redis_client: Redis) -> AsyncIterator[Backend]:
    # redis_client flushed the shared server's database first.
    config = backend_config(tmp_path, redis_server.url, identity=IDENTITY)
    async with serve(config, redis_server.url) as served:
        yield served


async def _chat(backend: Backend, client: Client, session_id: str, message: str = "hello") -> RawResponse:
    return await backend.call(
        "POST", "/api/chat", client=client, json_body={"message": message, "session_id": session_id}
    )


async def _upload(backend: Backend, client: Client, session_id: str, content: bytes) -> RawResponse:
    body, content_type = multipart("file", "notes.txt", content)
    return await backend.call(
        "POST",
        f"/api/sessions/{session_id}/files",
        client=client,
        body=body,
        headers=[("Content-Type", content_type)],
    )


async def test_a_session_is_created_with_a_random_id_and_the_browser_gets_its_identity_cookie(
    backend: Backend,
) -> None:
    created = await backend.call("POST", "/api/chat/sessions", json_body={})
    assert created.status == 201, created.body
    body = created.json()
    assert set(body) == {"session_id", "created_at", "title"}
    assert body["title"] is None
    assert body["created_at"].endswith("Z")
    assert len(body["session_id"]) == 32
    token = set_cookie_value(created)
    assert token is not None
    assert ids.is_client_token(token)
    attributes = set_cookie_attributes(created)
    assert attributes["path"] == "/api"
    assert attributes["samesite"].lower() == "strict"
    assert "httponly" in attributes
    assert "secure" not in attributes  # plain HTTP, and nobody trusted said otherwise
    # The raw cookie value is not what the registry keys on: it appears in no Redis key or value.
    keys = [k.decode() async for k in backend.redis.scan_iter("*")]
    assert not [k for k in keys if token in k]
    assert await backend.redis.hget(f"chat:session:{body['session_id']}", "owner") == (
        ids.client_owner(token).encode()
    )

    # The same browser again: no new cookie, and the list holds both sessions, newest first.
    browser = Client(token=token)
    second = await backend.call("POST", "/api/chat/sessions", client=browser)  # no body at all is fine too
    assert second.status == 201
    assert set_cookie_value(second) is None
    listed = (await backend.call("GET", "/api/chat/sessions", client=browser)).json()["sessions"]
    assert [s["session_id"] for s in listed] == [second.json()["session_id"], body["session_id"]]
    assert set(listed[0]) == {"session_id", "created_at", "updated_at", "title", "message_count"}


async def test_a_client_cannot_name_its_own_session(backend: Backend) -> None:
    named = await backend.call("POST", "/api/chat/sessions", json_body={"session_id": "mine"})
    assert named.status == 422
    assert named.error == "invalid_request"
    assert set_cookie_value(named) is None  # refused: no identity issued for nothing
    assert [k async for k in backend.redis.scan_iter("chat:*")] == []


async def test_the_cookie_is_secure_when_the_trusted_proxy_says_the_browser_used_tls(
    backend: Backend,
) -> None:
    proto = [("X-Forwarded-Proto", "https")]
    via_proxy = await backend.call("POST", "/api/chat/sessions", peer=FRONTEND, headers=proto)
    assert "secure" in set_cookie_attributes(via_proxy)
    direct = await backend.call("POST", "/api/chat/sessions", peer=BROWSER, headers=proto)
    assert "secure" not in set_cookie_attributes(direct)  # anyone can write X-Forwarded-Proto


async def test_two_clients_cannot_read_write_list_or_delete_each_others_sessions_or_files(
    backend: Backend,
) -> None:
    alice, mallory = Client(), Client()
    mine = await alice.new_session(backend)
    assert (await _chat(backend, alice, mine, "private words")).status == 200
    uploaded = await _upload(backend, alice, mine, b"alice's file")
    assert uploaded.status == 201, uploaded.body
    file_id = uploaded.json()["file_id"]
    theirs = await mallory.new_session(backend)
    mallory_file = (await _upload(backend, mallory, theirs, b"mallory's file")).json()["file_id"]
    stranger = Client()  # no cookie at all

    body, content_type = multipart("file", "x.txt", b"injected")
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/chat", {"json_body": {"message": "hi", "session_id": mine}}),
        ("POST", "/api/chat/stream", {"json_body": {"message": "hi", "session_id": mine}}),
        ("GET", f"/api/chat/sessions/{mine}/messages", {}),
        ("GET", f"/api/sessions/{mine}/files", {}),
        ("POST", f"/api/sessions/{mine}/files", {"body": body, "headers": [("Content-Type", content_type)]}),
        ("GET", f"/api/sessions/{mine}/files/{file_id}", {}),
        ("DELETE", f"/api/sessions/{mine}/files/{file_id}", {}),
        ("GET", f"/api/sessions/{mine}/files-summary", {}),
        ("DELETE", f"/api/chat/sessions/{mine}", {}),
    ]
    for who in (mallory, stranger):
        for method, path, kwargs in attempts:
            response = await backend.call(method, path, client=who, **kwargs)
            assert (response.status, response.error) == (404, "session_not_found"), (
                method,
                path,
                response.body,
            )
    # Through her own session, Mallory cannot reach Alice's file either.
    for method in ("GET", "DELETE"):
        through = await backend.call(method, f"/api/sessions/{theirs}/files/{file_id}", client=mallory)
        assert (through.status, through.error) == (404, "file_not_found")

    # Each lists only its own; Alice's side is exactly as she left it.
    assert [
        s["session_id"]
        for s in (await backend.call("GET", "/api/chat/sessions", client=mallory)).json()["sessions"]
    ] == [theirs]
    assert (await backend.call("GET", "/api/chat/sessions", client=stranger)).json() == {"sessions": []}
    own = (await backend.call("GET", "/api/chat/sessions", client=alice)).json()["sessions"]
    assert [(s["session_id"], s["message_count"], s["title"]) for s in own] == [(mine, 2, "private words")]
    messages = (await backend.call("GET", f"/api/chat/sessions/{mine}/messages", client=alice)).json()
    assert messages["messages"][0]["content"] == "private words"
    assert messages["total"] == 2
    files = (await backend.call("GET", f"/api/sessions/{mine}/files", client=alice)).json()["files"]
    assert [f["file_id"] for f in files] == [file_id]
    download = await backend.call("GET", f"/api/sessions/{mine}/files/{file_id}", client=alice)
    assert download.body == b"alice's file"
    assert len(transcript_messages(backend.data / "transcripts", mine)) == 2
    # ... and Alice cannot reach Mallory's file either.
    assert (
        await backend.call("GET", f"/api/sessions/{mine}/files/{mallory_file}", client=alice)
    ).status == 404


async def test_guessed_and_client_made_ids_get_404_and_change_nothing(backend: Backend) -> None:
    browser = Client()
    await browser.new_session(backend)
    # A conversation stored the old way, under a name a client chose: it exists, and still is nobody's.
    await backend.redis.rpush("chat:history:default", b'{"id":"x","role":"user","content":"old","ts":"t"}')
    before = sorted([k async for k in backend.redis.scan_iter("*")])
    for guess in ["test", "default", "h1", "itest-chat", ids.new_session_id(), "a" * 32]:
        for method, path, kwargs in [
            ("POST", "/api/chat", {"json_body": {"message": "hi", "session_id": guess}}),
            ("GET", f"/api/chat/sessions/{guess}/messages", {}),
            ("GET", f"/api/sessions/{guess}/files", {}),
            ("DELETE", f"/api/chat/sessions/{guess}", {}),
        ]:
            response = await backend.call(method, path, client=browser, **kwargs)
            assert (response.status, response.error) == (404, "session_not_found"), (guess, path)
            assert "exist" not in response.body.decode()  # the answer does not say whether it exists
    assert sorted([k async for k in backend.redis.scan_iter("*")]) == before
    assert sorted(p.name for p in (backend.data / "transcripts").glob("*.json*")) == []


async def test_the_identity_header_is_honoured_from_the_trusted_proxy_only(backend: Backend) -> None:
    alice = Client(user="alice")
    session_id = await alice.new_session(backend)
    assert alice.token is None  # a logged-in user gets no cookie: the login is the identity
    assert (await _chat(backend, alice, session_id)).status == 200

    listed = await backend.call("GET", "/api/chat/sessions", client=Client(user="alice"))
    assert [s["session_id"] for s in listed.json()["sessions"]] == [session_id]
    bob = Client(user="bob")
    assert (await backend.call("GET", "/api/chat/sessions", client=bob)).json() == {"sessions": []}
    assert (await _chat(backend, bob, session_id)).status == 404

    # The same header from a browser (not the trusted proxy) is ignored: it names nobody.
    spoof = [("X-Autobot-User", "alice")]
    for method, path in [
        ("GET", f"/api/chat/sessions/{session_id}/messages"),
        ("GET", f"/api/sessions/{session_id}/files"),
        ("DELETE", f"/api/chat/sessions/{session_id}"),
    ]:
        refused = await backend.call(method, path, peer=BROWSER, headers=spoof)
        assert (refused.status, refused.error) == (404, "session_not_found")
    assert (await backend.call("GET", "/api/chat/sessions", peer=BROWSER, headers=spoof)).json() == {
        "sessions": []
    }
    created = await backend.call("POST", "/api/chat/sessions", peer=BROWSER, headers=spoof)
    assert set_cookie_value(created) is not None  # treated as an anonymous browser
    listed = await backend.call("GET", "/api/chat/sessions", client=Client(user="alice"))
    assert [s["session_id"] for s in listed.json()["sessions"]] == [session_id]

    twice = await backend.call(
        "GET", "/api/chat/sessions", peer=FRONTEND, headers=[("X-Autobot-User", "a"), ("X-Autobot-User", "b")]
    )
    assert (twice.status, twice.error) == (400, "invalid_identity")


async def test_deleting_a_session_removes_history_and_transcript_and_soft_deletes_its_files(
    backend: Backend,
) -> None:
    owner, other = Client(), Client()
    session_id = await owner.new_session(backend)
    kept = await owner.new_session(backend)
    for text in ("one", "two"):
        assert (await _chat(backend, owner, session_id, text)).status == 200
    assert (await _chat(backend, owner, kept, "stays")).status == 200
    file_id = (await _upload(backend, owner, session_id, b"to be deleted")).json()["file_id"]
    kept_file = (await _upload(backend, owner, kept, b"kept")).json()["file_id"]
    transcript = backend.data / "transcripts" / f"{session_id}.jsonl"
    assert transcript.exists()

    assert (await backend.call("DELETE", f"/api/chat/sessions/{session_id}", client=other)).status == 404
    deleted = await backend.call("DELETE", f"/api/chat/sessions/{session_id}", client=owner)
    assert deleted.status == 200, deleted.body
    assert deleted.json() == {"session_id": session_id, "deleted": True}

    assert not transcript.exists()
    assert not (backend.data / "transcripts" / "sessions" / f"{session_id}.json").exists()
    for key in (f"chat:history:{session_id}", f"chat:meta:{session_id}", f"chat:session:{session_id}"):
        assert not await backend.redis.exists(key), key
    with sqlite3.connect(backend.data / "conversation_files.db") as db:
        rows = dict(db.execute("SELECT file_id, is_deleted FROM conversation_files").fetchall())
    assert rows == {file_id: 1, kept_file: 0}
    assert len(list((backend.data / "files").iterdir())) == 2  # soft: the content waits for the cleanup queue

    for method, path in [
        ("GET", f"/api/chat/sessions/{session_id}/messages"),
        ("GET", f"/api/sessions/{session_id}/files"),
        ("DELETE", f"/api/chat/sessions/{session_id}"),
    ]:
        assert (await backend.call(method, path, client=owner)).status == 404
    listed = (await backend.call("GET", "/api/chat/sessions", client=owner)).json()["sessions"]
    assert [s["session_id"] for s in listed] == [kept]
    assert (await backend.call("GET", f"/api/chat/sessions/{kept}/messages", client=owner)).json()[
        "total"
    ] == 2


async def test_a_refused_session_is_logged_without_its_full_id(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    owner, other = Client(), Client()
    session_id = await owner.new_session(backend)
    await other.new_session(backend)
    with caplog.at_level(logging.INFO, logger="autobot.services.main_backend.state"):
        assert (
            await backend.call("GET", f"/api/chat/sessions/{session_id}/messages", client=other)
        ).status == 404
        unknown = ids.new_session_id()
        assert (
            await backend.call("GET", f"/api/chat/sessions/{unknown}/messages", client=other)
        ).status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "autobot.services.main_backend.state"]
    assert any("another identity" in line and session_id[:6] in line for line in lines), lines
    assert any("not issued" in line and unknown[:6] in line for line in lines), lines
    assert not [line for line in lines if session_id in line or unknown in line]


async def test_sessions_are_shared_by_main_backend_processes_and_survive_a_restart(
    tmp_path: Path, redis_server: RedisServer, redis_client: Redis
) -> None:
    # Two main-backends on one Redis, each with its own disk (two machines behind nginx), then a restart.
    one = backend_config(tmp_path / "one", redis_server.url)
    two = backend_config(tmp_path / "two", redis_server.url)
    browser = Client()
    async with serve(one, redis_server.url) as first, serve(two, redis_server.url) as second:
        session_id = await browser.new_session(first)
        assert (await _chat(second, browser, session_id, "via the other machine")).status == 200
        listed = (await first.call("GET", "/api/chat/sessions", client=browser)).json()["sessions"]
        assert listed[0]["title"] == "via the other machine"
    # After a restart, both machines still know the session; the history is whole on both (the machine whose
    # transcript is behind Redis serves Redis's window and never cuts it back).
    async with serve(two, redis_server.url) as restarted, serve(one, redis_server.url) as other_machine:
        for machine in (restarted, other_machine):
            page = await machine.call("GET", f"/api/chat/sessions/{session_id}/messages", client=browser)
            assert page.status == 200
            assert page.json()["total"] == 2
        assert (await restarted.call("GET", "/api/chat/sessions", client=Client())).json()["sessions"] == []


async def test_a_registry_outage_is_503_and_issues_no_identity(tmp_path: Path) -> None:
    with dedicated_redis(tmp_path / "redis") as server:
        config = backend_config(tmp_path, server.url)
        async with serve(config, server.url) as backend:
            server.stop()
            refused = await backend.call("POST", "/api/chat/sessions", json_body={})
            assert (refused.status, refused.error) == (503, "sessions_unavailable")
            assert set_cookie_value(refused) is None
            # A guess cannot be answered either way without the registry: 503, never a possibly wrong 404.
            guess = await backend.call(
                "GET",
                f"/api/chat/sessions/{ids.new_session_id()}/messages",
                client=Client(token=ids.new_client_token()),
            )
            assert (guess.status, guess.error) == (503, "sessions_unavailable")


async def test_the_stream_sends_heartbeats_while_the_model_is_silent(
    tmp_path: Path, redis_server: RedisServer, redis_client: Redis
) -> None:
    with running_fake_llm_runtime() as runtime:
        runtime.script = Script(reply="late but here", delay_s=1.5)
        config = backend_config(tmp_path, redis_server.url, stream_heartbeat_s=0.2).model_copy(
            update={"llm": LLMConfig(provider="ollama", base_url=runtime.url)}
        )
        async with serve(config, redis_server.url) as backend:
            browser = Client()
            session_id = await browser.new_session(backend)
            started = asyncio.get_running_loop().time()
            streamed = await backend.call(
                "POST",
                "/api/chat/stream",
                client=browser,
                json_body={"message": "think hard", "session_id": session_id},
            )
            elapsed = asyncio.get_running_loop().time() - started
    assert streamed.status == 200
    raw = streamed.body.decode()
    before_first_chunk = raw.split("event: chunk", 1)[0]
    # The model said nothing for 1.5 s: about one ping per 0.2 s came through meanwhile, as comment lines.
    assert before_first_chunk.count(": ping\n\n") >= 3, raw
    assert elapsed >= 1.5
    events = parse_sse(raw)
    assert events[-1][0] == "done"
    assert "".join(d["text"] for kind, d in events if kind == "chunk") == "late but here"


async def test_without_silence_there_is_no_heartbeat(backend: Backend) -> None:
    browser = Client()
    session_id = await browser.new_session(backend)
    streamed = await backend.call(
        "POST", "/api/chat/stream", client=browser, json_body={"message": "quick", "session_id": session_id}
    )
    assert streamed.status == 200
    assert ": ping" not in streamed.body.decode()
    assert parse_sse(streamed.body.decode())[-1][0] == "done"


async def test_a_turn_on_another_main_backend_keeps_the_conversation(
    tmp_path: Path, redis_server: RedisServer, redis_client: Redis
) -> None:
    """nginx keeps an identity on one main-backend; when a machine is added or lost, its users move. The new
    machine's transcript is behind Redis: its turn extends Redis's window and count, never cuts them back."""
    one = backend_config(tmp_path / "one", redis_server.url)
    two = backend_config(tmp_path / "two", redis_server.url)
    browser = Client()
    async with serve(one, redis_server.url) as first, serve(two, redis_server.url) as second:
        session_id = await browser.new_session(first)
        for turn in range(5):
            assert (
                await _chat(first, browser, session_id, f"turn {turn} on the first machine")
            ).status == 200
        moved = await _chat(second, browser, session_id, "a turn on the second machine")
        assert moved.status == 200, moved.body
        assert moved.json()["history_used"] == 10  # the five earlier turns were the context
        page = (await second.call("GET", f"/api/chat/sessions/{session_id}/messages", client=browser)).json()
        assert page["total"] == 12
        assert page["messages"][-2]["content"] == "a turn on the second machine"
        assert await redis_client.llen(f"chat:history:{session_id}") == 12
