"""Issue 13, items 1-3, 5 and 6, reproduced as the issue describes them: main-backend processes under
uvicorn, real HTTP on loopback, a real redis-server, the transcripts on disk.

- a refused message (too large, unknown model, bad input) changes nothing, in Redis or in the transcript;
- an unknown model is refused on every chat route, with the known models listed;
- pool exhaustion under 500 concurrent requests is "busy" (503 + Retry-After), not "Redis unavailable", and
  afterwards every session's Redis list agrees with its transcript, the record;
- two processes on one data directory lose no message;
- the messages route pages back through the whole history, older pages coming from the transcript.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from test_chat_support import (
    BackendProcess,
    backend_config,
    kill_backend,
    new_session,
    start_backend,
    transcript_messages,
    write_config,
)
from tests.support.redis_server import RedisServer, start_redis


@dataclass
class Cluster:
    root: Path
    redis_server: RedisServer
    backend: BackendProcess

    @property
    def transcripts(self) -> Path:
        return self.root / "data" / "transcripts"

    def start_backend(self, name: str, **redis: Any) -> BackendProcess:
        """Another main-backend on the same Redis and data directory, with its own Redis settings."""
        config = backend_config(self.root, self.redis_server.url)
        config = config.model_copy(update={"redis": config.redis.model_copy(update=redis)})
        return start_backend(write_config(self.root / f"config-{name}.yml", config))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("consistency")
    server = start_redis(root / "redis")
    try:
        backend = start_backend(write_config(root / "config.yml", backend_config(root, server.url)))
        try:
            yield Cluster(root, server, backend)
        finally:
            kill_backend(backend)
    finally:
        server.stop()


@pytest.fixture
async def redis(cluster: Cluster) -> AsyncIterator[Redis]:
    client = Redis.from_url(cluster.redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.backend.url, timeout=60) as c:
        yield c


async def _stored(redis: Redis, cluster: Cluster, session_id: str) -> tuple[object, ...]:
    """Everything stored for a session: its Redis list and hash, and its transcript."""
    return (
        await redis.lrange(f"chat:history:{session_id}", 0, -1),
        await redis.hgetall(f"chat:meta:{session_id}"),
        transcript_messages(cluster.transcripts, session_id),
    )


async def _redis_agrees_with_transcript(redis: Redis, cluster: Cluster, session_id: str) -> bool:
    """Redis holds the newest messages of the transcript, in its order, and its message count."""
    ids = [m["id"] for m in transcript_messages(cluster.transcripts, session_id)]
    held = [json.loads(raw)["id"] for raw in await redis.lrange(f"chat:history:{session_id}", 0, -1)]
    seq = int(await redis.hget(f"chat:meta:{session_id}", "seq") or 0)
    return held == ids[len(ids) - len(held) :] and len(held) == min(len(ids), 61) and seq == len(ids)


async def _chat(client: httpx.AsyncClient, session_id: str, message: str, **extra: Any) -> httpx.Response:
    return await client.post("/api/chat", json={"message": message, "session_id": session_id, **extra})


async def test_a_refused_message_changes_nothing(
    cluster: Cluster, client: httpx.AsyncClient, redis: Redis
) -> None:
    refused = await new_session(client)
    for turn in range(3):
        assert (await _chat(client, refused, f"normal turn {turn}")).status_code == 200
    before = await _stored(redis, cluster, refused)
    too_large = await _chat(client, refused, "x " * 20000)
    assert (too_large.status_code, too_large.json()["error"]) == (413, "context_too_large")
    streamed = await client.post("/api/chat/stream", json={"message": "x " * 20000, "session_id": refused})
    assert streamed.status_code == 413
    unknown = await _chat(client, refused, "hi", model="gpt-17-ultra")
    assert unknown.status_code == 422
    blank = await _chat(client, refused, "   ")
    assert blank.status_code == 422
    assert await _stored(redis, cluster, refused) == before
    after = (await _chat(client, refused, "and now?")).json()
    assert (after["history_used"], after["history_dropped"]) == (6, 0)  # the conversation is intact


async def test_unknown_models_are_refused_on_every_route_with_the_known_models(
    cluster: Cluster, client: httpx.AsyncClient, redis: Redis
) -> None:
    known = [m["name"] for m in (await client.get("/api/models")).json()["models"]]
    session = await new_session(client)
    body = {"message": "hello", "session_id": session, "model": "gpt-17-ultra"}
    responses = [
        await client.post("/api/chat", json=body),
        await client.post("/api/chat/stream", json=body),
        await client.get(f"/api/chat/sessions/{session}/messages", params={"model": "gpt-17-ultra"}),
    ]
    for response in responses:
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/json"
        error = response.json()
        assert error["error"] == "unknown_model"
        assert sorted(error["known_models"]) == sorted(known)
        assert "gpt-17-ultra" in error["detail"]
    assert await _stored(redis, cluster, session) == ([], {}, [])
    # The default applies only when no model is named.
    default = (await client.get("/api/models")).json()["default"]
    assert (await _chat(client, session, "hello")).json()["model"] == default


async def test_500_concurrent_requests_on_a_small_pool_are_busy_not_down_and_redis_converges(
    cluster: Cluster, redis: Redis
) -> None:
    small = cluster.start_backend("small-pool", max_connections=2, pool_timeout_s=0.05)
    try:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx.AsyncClient(base_url=small.url, timeout=120, limits=limits) as burst:
            sessions = [await new_session(burst) for _ in range(500)]
            responses = await asyncio.gather(*(_chat(burst, s, f"hello from {s}") for s in sessions))
            outcomes = collections.Counter(
                (r.status_code, r.json().get("error"), r.headers.get("retry-after")) for r in responses
            )
            # Redis was up all along: every answer is a reply or "busy, retry in 1 s", never "unavailable".
            assert set(outcomes) <= {(200, None, None), (503, "busy", "1")}, outcomes
            assert outcomes[(503, "busy", "1")] > 0  # the pool really was too small for the burst
            for session, response in zip(sessions, responses, strict=True):
                if response.status_code == 503:
                    assert response.json()["saved_message_ids"] == []
                    assert transcript_messages(cluster.transcripts, session) == []  # refused: nothing stored
            # The repair path: a read of each session rebuilds a list that is behind its transcript.
            for session in sessions:
                assert (await burst.get(f"/api/chat/sessions/{session}/messages")).status_code == 200
    finally:
        kill_backend(small)
    disagree = [s for s in sessions if not await _redis_agrees_with_transcript(redis, cluster, s)]
    assert disagree == []


async def test_a_turn_whose_redis_write_failed_is_repaired_on_the_next_turn(
    cluster: Cluster, client: httpx.AsyncClient, redis: Redis
) -> None:
    repair = await new_session(client)
    assert (await _chat(client, repair, "one")).status_code == 200
    await redis.config_set("min-replicas-to-write", 1)  # Redis refuses every write, reads still work
    try:
        failed = await _chat(client, repair, "two")
    finally:
        await redis.config_set("min-replicas-to-write", 0)
    assert (failed.status_code, failed.json()["error"]) == (503, "history_unavailable")
    saved = transcript_messages(cluster.transcripts, repair)
    assert failed.json()["saved_message_ids"] == [saved[-1]["id"]]  # the message is in the record
    assert not await _redis_agrees_with_transcript(redis, cluster, repair)
    after = (await _chat(client, repair, "three")).json()
    assert after["history_used"] == 3  # one, its reply, two
    assert await _redis_agrees_with_transcript(redis, cluster, repair)


async def test_two_backends_on_one_data_directory_lose_no_message(cluster: Cluster, redis: Redis) -> None:
    second = cluster.start_backend("second")
    try:
        urls = [cluster.backend.url, second.url]
        async with httpx.AsyncClient(timeout=120, base_url=urls[0]) as c:
            two = await new_session(c)  # both backends share the registry; the cookie goes to both
            responses = await asyncio.gather(
                *(
                    c.post(urls[i % 2] + "/api/chat", json={"message": f"two {i}", "session_id": two})
                    for i in range(200)
                )
            )
    finally:
        kill_backend(second)
    assert [r.status_code for r in responses] == [200] * 200
    messages = transcript_messages(cluster.transcripts, two)
    assert sorted(m["content"] for m in messages if m["role"] == "user") == sorted(
        f"two {i}" for i in range(200)
    )
    assert len(messages) == 400
    assert [m["seq"] for m in messages] == list(range(1, 401))
    assert {r.json()["reply_id"] for r in responses} <= {m["id"] for m in messages}
    assert await _redis_agrees_with_transcript(redis, cluster, two)


async def _all_pages(client: httpx.AsyncClient, session_id: str, limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    before: int | None = None
    for _ in range(1000):
        params: dict[str, int] = {"limit": limit} if before is None else {"limit": limit, "before": before}
        response = await client.get(f"/api/chat/sessions/{session_id}/messages", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen[:0] = page["messages"]
        before = page["next_before"]
        if before is None:
            return seen
    raise AssertionError("next_before never reached the first message")


async def test_the_messages_route_pages_back_to_the_first_message(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    old_history = await new_session(client)
    for turn in range(150):
        assert (await _chat(client, old_history, f"turn {turn}")).status_code == 200
    newest = (await client.get(f"/api/chat/sessions/{old_history}/messages", params={"limit": 50})).json()
    assert (newest["total"], newest["retained"]) == (300, 61)
    messages = await _all_pages(client, old_history, 50)
    assert [m["seq"] for m in messages] == list(range(1, 301))
    assert messages[0]["content"] == "turn 0"
    # Redis emptied (restart without persistence, expiry): the same pages, from the record.
    await redis.delete(f"chat:history:{old_history}", f"chat:meta:{old_history}")
    assert await _all_pages(client, old_history, 40) == messages


async def test_a_transcript_in_the_previous_format_is_served_and_migrated_losing_nothing(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    legacy = await new_session(client)  # the session is issued; its transcript is still in the old format
    old = [
        {"id": f"old{i:03d}", "role": "user" if i % 2 == 0 else "assistant", "content": f"old {i}", "ts": "t"}
        for i in range(100)
    ]
    document = {
        "session_id": legacy,
        "created_at": "2025-01-01T00:00:00.000000Z",
        "updated_at": "2025-01-01T00:00:00.000000Z",
        "message_count": len(old),
        "messages": old,
    }
    (cluster.transcripts / f"{legacy}.json").write_text(json.dumps(document), encoding="utf-8")
    served = await _all_pages(client, legacy, 30)
    assert [(m["id"], m["seq"]) for m in served] == [(m["id"], i + 1) for i, m in enumerate(old)]
    reply = await _chat(client, legacy, "new turn")
    assert reply.status_code == 200
    assert reply.json()["history_used"] > 0  # the old conversation is the context of the new turn
    assert not (cluster.transcripts / f"{legacy}.json").exists()
    migrated = transcript_messages(cluster.transcripts, legacy)
    assert [m["id"] for m in migrated[:100]] == [m["id"] for m in old]
    assert [m["seq"] for m in migrated] == list(range(1, 103))
    assert [m["id"] for m in await _all_pages(client, legacy, 30)] == [m["id"] for m in migrated]
