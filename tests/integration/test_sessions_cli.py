"""`autobot sessions list|export|adopt` on conversations stored before sessions had owners (issue 15).

The legacy data is made the way main-backend made it before: the chat workflow and the file store called with
a session id the client chose, on a real Redis and real files in a temporary directory. Then the operator
command reads it, and after `adopt` the owner reaches it again over HTTP while anyone else still gets 404.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from redis.asyncio import Redis
from test_chat_support import backend_config, write_config
from test_sessions_http import FRONTEND, Backend, Client, serve
from tests.integration.cluster import create_acl_user, load_matrix
from tests.support.redis_server import RedisServer

from autobot.chat.entries import ChatEntry
from autobot.chat.history import RedisChatHistory
from autobot.chat.transcripts import TranscriptStore
from autobot.chat.workflow import ChatWorkflowManager
from autobot.cli import main
from autobot.config import ServiceConfig
from autobot.context import ContextWindowManager, ModelRegistry
from autobot.llm import make_provider
from autobot.sessions import ids
from autobot.storage import ConversationFileManager

IDENTITY = {"header": "X-Autobot-User", "trusted_proxies": [FRONTEND]}


async def _store_the_old_way(config: ServiceConfig, redis: Redis) -> dict[str, Any]:
    """What main-backend stored before issue 15, under ids clients chose: a chat with a file, files alone,
    and a history only Redis still holds."""
    backend = config.backend
    assert backend is not None
    workflow = ChatWorkflowManager(
        redis=redis,
        windows=ContextWindowManager(ModelRegistry.load()),
        provider=make_provider(config.llm),
        transcripts=TranscriptStore(backend.transcripts_dir),
        history_ttl_s=3600,
    )
    await workflow.initialize()
    try:
        for text in ("first question about the cluster", "second question"):
            await workflow.chat("legacy-chat", text)
    finally:
        await workflow.aclose()
    files = ConversationFileManager.from_config(backend)
    await files.initialize()
    chat_file = await files.add_file("legacy-chat", "notes.txt", b"legacy notes", mime_type="text/plain")
    only_file = await files.add_file("files-only", "data.csv", b"a,b\n1,2\n", mime_type="text/csv")
    history = RedisChatHistory(redis, max_messages=50, ttl_s=3600)
    await history.append("redis-only", [ChatEntry.new("user", "kept in redis only")], last_seq=1)
    return {"chat_file": chat_file.file_id, "only_file": only_file.file_id}


def _cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["sessions", *args], input=stdin)


async def _run_cli(*args: str, stdin: str | None = None) -> Result:
    # The command runs its own event loop (asyncio.run): in a thread, beside the test's.
    return await asyncio.to_thread(_cli, *args, stdin=stdin)


@pytest.fixture
async def legacy(
    tmp_path: Path, redis_server: RedisServer, redis_client: Redis
) -> tuple[ServiceConfig, Path, dict[str, Any]]:
    config = backend_config(tmp_path, redis_server.url, identity=IDENTITY)
    path = write_config(tmp_path / "config.yml", config)
    stored = await _store_the_old_way(config, redis_client)
    return config, path, stored


async def test_list_shows_every_legacy_session_and_where_its_data_is(
    legacy: tuple[ServiceConfig, Path, dict[str, Any]],
) -> None:
    _, config_path, _ = legacy
    result = await _run_cli("list", "--config", str(config_path), "--json")
    assert result.exit_code == 0, result.output
    rows = {row["session_id"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == {"legacy-chat", "files-only", "redis-only"}
    assert {r["status"] for r in rows.values()} == {"legacy"}
    chat = rows["legacy-chat"]
    assert (chat["transcript"], chat["redis_history"], chat["files"], chat["owner"]) == (True, True, 1, None)
    assert (rows["files-only"]["transcript"], rows["files-only"]["files"]) == (False, 1)
    assert (rows["redis-only"]["transcript"], rows["redis-only"]["redis_history"]) == (False, True)

    table = await _run_cli("list", "--config", str(config_path))
    assert table.exit_code == 0
    assert "legacy-chat" in table.stdout
    assert "0 owned, 0 recorded, 3 legacy" in table.stderr


async def test_export_reads_the_whole_conversation_and_its_files(
    legacy: tuple[ServiceConfig, Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, config_path, stored = legacy
    result = await _run_cli("export", "legacy-chat", "--config", str(config_path))
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["status"] == "legacy"
    assert exported["messages_from"] == "transcript"
    contents = [m["content"] for m in exported["messages"]]
    assert len(contents) == 4
    assert contents[0] == "first question about the cluster"
    assert contents[2] == "second question"
    [record] = exported["files"]
    assert record["file_id"] == stored["chat_file"]
    assert Path(record["content_path"]).read_bytes() == b"legacy notes"

    from_redis = await _run_cli("export", "redis-only", "--config", str(config_path))
    assert json.loads(from_redis.stdout)["messages_from"] == "redis"
    assert json.loads(from_redis.stdout)["messages"][0]["content"] == "kept in redis only"

    out = tmp_path / "export.json"
    written = await _run_cli("export", "files-only", "--config", str(config_path), "--output", str(out))
    assert written.exit_code == 0, written.output
    assert out.stat().st_mode & 0o777 == 0o600
    assert json.loads(out.read_text())["files"][0]["file_id"] == stored["only_file"]


async def test_adopted_sessions_are_their_owners_again_and_nobody_elses(
    legacy: tuple[ServiceConfig, Path, dict[str, Any]], redis_server: RedisServer
) -> None:
    config, config_path, stored = legacy
    token = ids.new_client_token()
    adopted = await _run_cli(
        "adopt", "legacy-chat", "--config", str(config_path), "--cookie-stdin", stdin=token
    )
    assert adopted.exit_code == 0, adopted.output
    assert token not in adopted.output  # the cookie value is a secret: never echoed
    by_user = await _run_cli("adopt", "files-only", "--config", str(config_path), "--user", "alice")
    assert by_user.exit_code == 0, by_user.output

    browser, alice, stranger = Client(token=token), Client(user="alice"), Client(token=ids.new_client_token())
    async with serve(config, redis_server.url) as backend:
        listed = (await backend.call("GET", "/api/chat/sessions", client=browser)).json()["sessions"]
        assert [(s["session_id"], s["title"], s["message_count"]) for s in listed] == [
            ("legacy-chat", "first question about the cluster", 4)
        ]
        page = (await backend.call("GET", "/api/chat/sessions/legacy-chat/messages", client=browser)).json()
        assert page["total"] == 4
        download = await backend.call(
            "GET", f"/api/sessions/legacy-chat/files/{stored['chat_file']}", client=browser
        )
        assert download.body == b"legacy notes"
        # Chatting on continues the same conversation.
        more = await backend.call(
            "POST", "/api/chat", client=browser, json_body={"message": "third", "session_id": "legacy-chat"}
        )
        assert more.status == 200
        assert more.json()["history_used"] == 4
        files = (await backend.call("GET", "/api/sessions/files-only/files", client=alice)).json()["files"]
        assert [f["file_id"] for f in files] == [stored["only_file"]]
        await _nobody_else(backend, stranger)
        await _nobody_else(backend, Client(user="mallory"))

    listed_after = await _run_cli("list", "--config", str(config_path), "--json")
    statuses = {r["session_id"]: r["status"] for r in map(json.loads, listed_after.stdout.splitlines())}
    assert statuses == {"legacy-chat": "owned", "files-only": "owned", "redis-only": "legacy"}


async def _nobody_else(backend: Backend, other: Client) -> None:
    for path in [
        "/api/chat/sessions/legacy-chat/messages",
        "/api/sessions/legacy-chat/files",
        "/api/sessions/files-only/files",
        "/api/chat/sessions/redis-only/messages",
    ]:
        response = await backend.call("GET", path, client=other)
        assert (response.status, response.error) == (404, "session_not_found"), path
    assert (await backend.call("GET", "/api/chat/sessions", client=other)).json() == {"sessions": []}


async def test_adopt_refuses_what_it_cannot_do_and_changes_nothing(
    legacy: tuple[ServiceConfig, Path, dict[str, Any]], redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, config_path, _ = legacy
    assert config.backend is not None
    first = await _run_cli("adopt", "legacy-chat", "--config", str(config_path), "--user", "alice")
    assert first.exit_code == 0
    snapshot = sorted([k async for k in redis_client.scan_iter("*")])
    records = sorted((config.backend.transcripts_dir / "sessions").iterdir())

    cases: list[tuple[list[str], str | None, str]] = [
        (["legacy-chat", "--user", "bob"], None, "owned by another identity"),
        (["never-stored", "--user", "bob"], None, "no store holds a session 'never-stored'"),
        (["../etc", "--user", "bob"], None, "session id may contain only"),
        (["redis-only"], None, "exactly one of"),
        (["redis-only", "--user", "bob", "--recorded"], None, "exactly one of"),
        (["redis-only", "--cookie-stdin"], "not-a-cookie\n", "is not an autobot_client cookie value"),
        (["redis-only", "--recorded"], None, "has no durable record here"),
        (["redis-only", "--user", "bad\x01name"], None, "not a user name"),
    ]
    for args, stdin, message in cases:
        result = await _run_cli("adopt", *args, "--config", str(config_path), stdin=stdin)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
    assert sorted([k async for k in redis_client.scan_iter("*")]) == snapshot
    assert sorted((config.backend.transcripts_dir / "sessions").iterdir()) == records

    # Run as another user than the service's, its record would be unreadable to main-backend: refused.
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(config.backend.transcripts_dir).st_uid + 1)
    result = await _run_cli("adopt", "redis-only", "--config", str(config_path), "--user", "bob")
    assert result.exit_code == 2
    assert "run this as the user that owns" in result.stderr
    assert not await redis_client.exists("chat:session:redis-only")


async def test_after_redis_lost_the_registry_the_records_restore_it(
    tmp_path: Path, redis_server: RedisServer, redis_client: Redis
) -> None:
    config = backend_config(tmp_path, redis_server.url)
    config_path = write_config(tmp_path / "config.yml", config)
    browser = Client()
    async with serve(config, redis_server.url) as backend:
        session_id = await browser.new_session(backend)
    await redis_client.flushdb()  # Redis came back without its data

    listed = await _run_cli("list", "--config", str(config_path), "--json")
    [row] = map(json.loads, listed.stdout.splitlines())
    assert (row["session_id"], row["status"]) == (session_id, "recorded")
    assert browser.token is not None
    assert row["recorded_owner"] == ids.client_owner(browser.token)
    restored = await _run_cli("adopt", session_id, "--config", str(config_path), "--recorded")
    assert restored.exit_code == 0, restored.output
    async with serve(config, redis_server.url) as backend:
        listed_http = (await backend.call("GET", "/api/chat/sessions", client=browser)).json()["sessions"]
    assert [s["session_id"] for s in listed_http] == [session_id]


def test_the_command_needs_main_backends_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("service_id: npu-worker\nlisten: {port: 8081}\n")
    result = _cli("list", "--config", str(path))
    assert result.exit_code == 2
    assert "needs main-backend's" in result.stderr


async def test_the_command_needs_no_more_redis_rights_than_main_backend_has(
    legacy: tuple[ServiceConfig, Path, dict[str, Any]], redis_client: Redis, tmp_path: Path
) -> None:
    config, _, _ = legacy
    user, password = await create_acl_user(redis_client, load_matrix(), "main-backend")
    password_file = tmp_path / "redis.password"
    password_file.write_text(password)
    as_service = config.model_copy(
        update={"redis": config.redis.model_copy(update={"username": user, "password_file": password_file})}
    )
    config_path = write_config(tmp_path / "as-service.yml", as_service)
    await redis_client.execute_command("ACL", "LOG", "RESET")
    for args in (
        ["list"],
        ["export", "legacy-chat"],
        ["export", "redis-only"],
        ["adopt", "legacy-chat", "--user", "alice"],
    ):
        result = await _run_cli(*args, "--config", str(config_path))
        assert result.exit_code == 0, (args, result.output)
    log = await redis_client.execute_command("ACL", "LOG")
    assert [e for e in log if e.get(b"username") == user.encode()] == []
