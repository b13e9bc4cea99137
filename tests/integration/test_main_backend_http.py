"""main-backend served by uvicorn in its own process, over real HTTP on a free loopback port.

The server reads a rendered config file, talks to its own redis-server (which a test stops and restarts),
and is shut down with SIGTERM, which must run the lifespan shutdown and exit cleanly.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_chat_support import (
    backend_config,
    kill_backend,
    new_session,
    parse_sse,
    start_backend,
    transcript_messages,
    write_config,
)
from tests.support.redis_server import RedisServer, start_redis


@dataclass
class Served:
    base_url: str
    data_dir: Path
    redis: RedisServer
    redis_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("main-backend")
    redis = start_redis(root / "redis")
    config = write_config(root / "config.yml", backend_config(root, redis.url))
    backend = start_backend(config)
    state = Served(backend.url, root / "data", redis, root / "redis")
    try:
        yield state
        backend.process.send_signal(signal.SIGTERM)
        _, err = backend.process.communicate(timeout=30)
        # Graceful: the lifespan shutdown ran (uvicorn re-raises SIGTERM after it, hence -15 on new versions).
        assert backend.process.returncode in (0, -signal.SIGTERM), err.decode()
        assert "Application shutdown complete" in err.decode()
    finally:
        kill_backend(backend)
        state.redis.stop()


async def test_health_and_ready_over_http(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as client:
        assert (await client.get("/api/health")).json()["status"] == "ok"
        ready = await client.get("/api/ready")
        assert ready.status_code == 200, ready.text


async def test_chat_and_stream_over_http(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as client:
        h1 = await new_session(client)
        reply = await client.post("/api/chat", json={"message": "over the wire", "session_id": h1})
        assert reply.status_code == 200
        assert reply.json()["reply"].startswith("[offline-echo]")
        frames = 0
        async with client.stream(
            "POST", "/api/chat/stream", json={"message": "again", "session_id": h1}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = ""
            async for text in r.aiter_text():
                frames += 1
                raw += text
        events = parse_sse(raw)
        assert events[-1][0] == "done"
        assert events[-1][1]["history_used"] == 2
        assert frames > 1  # streamed in pieces, not buffered into one body


async def test_50_concurrent_clients_over_http(served: Served) -> None:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=served.base_url, limits=limits, timeout=30) as client:
        par = [await new_session(client) for _ in range(50)]
        responses = await asyncio.gather(
            *(client.post("/api/chat", json={"message": f"m{i}", "session_id": par[i]}) for i in range(50))
        )
    assert [r.status_code for r in responses] == [200] * 50


async def test_upload_over_http(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as client:
        h2 = await new_session(client)
        up = await client.post(
            f"/api/sessions/{h2}/files", files={"file": ("a.txt", b"hello file", "text/plain")}
        )
        assert up.status_code == 201, up.text
        got = await client.get(f"/api/sessions/{h2}/files/{up.json()['file_id']}")
        assert got.content == b"hello file"


async def test_redis_outage_503_keeps_the_message_and_recovers_from_the_transcript(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as client:
        out = await new_session(client)
        for text in ("one", "two"):
            assert (
                await client.post("/api/chat", json={"message": text, "session_id": out})
            ).status_code == 200
        served.redis.stop()
        down = await client.post("/api/chat", json={"message": "lost?", "session_id": out})
        assert down.status_code == 503
        assert down.json()["error"] == "history_unavailable"
        assert (await client.get("/api/ready")).status_code == 503
        assert transcript_messages(served.data_dir / "transcripts", out)[-1]["content"] == "lost?"

        # Redis comes back empty (no persistence): the next turn refills the history from the transcript.
        served.redis = start_redis(served.redis_dir, port=served.redis.port)
        back = await client.post("/api/chat", json={"message": "three", "session_id": out})
        assert back.status_code == 200, back.text
        assert back.json()["history_used"] == 5  # one, reply, two, reply, lost?
        assert (await client.get("/api/ready")).status_code == 200
