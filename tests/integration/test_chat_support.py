"""Helpers shared by the chat and main-backend integration tests (this module holds no tests).

Everything here is real: main-backend configs pointing at real Redis servers and temporary directories,
the app's own lifespan, server-sent events parsed from real response bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import FastAPI
from redis.asyncio import Redis
from tests.support.redis_server import RedisServer, free_port, start_redis

from autobot.config import RedisConfig, ServiceConfig
from autobot.redis_pool import create_redis
from autobot.services.main_backend import create_app


def backend_config(tmp_path: Path, redis_url: str, **backend: Any) -> ServiceConfig:
    """A main-backend config as Ansible would render it, every path inside tmp_path."""
    raw: dict[str, Any] = {
        "service_id": "main-backend",
        "listen": {"host": "127.0.0.1", "port": 8001},
        # Short timeouts and no retries: a stopped Redis must fail fast in tests.
        "redis": {"url": redis_url, "socket_timeout_s": 1.0, "connect_timeout_s": 0.5, "retries": 0},
        "llm": {"provider": "offline"},
        "backend": {
            "database": str(tmp_path / "data" / "conversation_files.db"),
            "files_dir": str(tmp_path / "data" / "files"),
            "transcripts_dir": str(tmp_path / "data" / "transcripts"),
            **backend,
        },
    }
    return ServiceConfig.model_validate(raw)


def write_config(path: Path, config: ServiceConfig) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path


def transcript_messages(transcripts_dir: Path, session_id: str) -> list[dict[str, Any]]:
    """A session's transcript as stored on disk, oldest first: the records of `<id>.jsonl`, or the messages
    of a transcript still in the previous one-document format `<id>.json` (the HTTP tests of issue 13 were
    also run against the version before it, to show each defect). Empty when there is none."""
    legacy = transcripts_dir / f"{session_id}.json"
    if legacy.exists():
        messages: list[dict[str, Any]] = json.loads(legacy.read_bytes())["messages"]
        return messages
    path = transcripts_dir / f"{session_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


_LAUNCH = """
import sys
import uvicorn
from autobot.config import load_config
from autobot.services.main_backend import create_app
app = create_app(load_config(sys.argv[1]))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="info", access_log=False)
"""


@dataclass
class BackendProcess:
    """main-backend served by uvicorn in a process of its own, on a free loopback port."""

    url: str
    process: subprocess.Popen[bytes]


def start_backend(config_path: Path, timeout_s: float = 30.0) -> BackendProcess:
    """Start main-backend with a rendered config file and wait until /api/health answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, str(config_path), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"main-backend exited with {proc.returncode}: {proc.communicate()[1].decode()}"
            )
        try:
            if httpx.get(url + "/api/health", timeout=1.0).status_code == 200:
                return BackendProcess(url, proc)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"main-backend did not answer on {url} within {timeout_s}s")


def kill_backend(backend: BackendProcess) -> None:
    """Stop a backend that is still running (cleanup after a failed test)."""
    if backend.process.poll() is None:
        backend.process.kill()
        backend.process.communicate()


@contextlib.asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound to the app in-process, with the app's real lifespan around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://main-backend.test") as client:
            yield client


@contextlib.asynccontextmanager
async def backend_client(tmp_path: Path, redis_url: str, **backend: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(backend_config(tmp_path, redis_url, **backend))) as client:
        yield client


@contextlib.contextmanager
def dedicated_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop to simulate an outage."""
    server = start_redis(workdir)
    try:
        yield server
    finally:
        server.stop()


async def new_session(client: httpx.AsyncClient) -> str:
    """A session issued to `client` (its cookie jar keeps the identity main-backend gives it)."""
    response = await client.post("/api/chat/sessions", json={})
    assert response.status_code == 201, response.text
    session_id = response.json()["session_id"]
    assert isinstance(session_id, str)
    return session_id


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs from a text/event-stream body; fails on a malformed frame. Comment lines (the
    heartbeat, ": ping") are skipped, as a browser's EventSource skips them."""
    events: list[tuple[str, dict[str, Any]]] = []
    for frame in raw.split("\n\n"):
        lines = [line for line in frame.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@contextlib.asynccontextmanager
async def monitor_commands(url: str) -> AsyncIterator[list[str]]:
    """Every command Redis executed while the block ran, as MONITOR reports it ("LRANGE key -21 -1").

    The list is filled when the block exits: a sentinel PING marks the end, so nothing is missed or guessed.
    """
    watcher, poker = Redis.from_url(url), Redis.from_url(url)
    seen: list[str] = []
    sentinel = "monitor-sentinel-end"
    try:
        await poker.ping()  # connect (and say HELLO) before the monitor starts listening
        async with watcher.monitor() as monitor:
            yield seen
            await poker.echo(sentinel)
            while True:
                command = (await monitor.next_command())["command"]
                if command == f"ECHO {sentinel}":
                    break
                seen.append(command)
    finally:
        await watcher.aclose()
        await poker.aclose()


@contextlib.asynccontextmanager
async def pooled_client(url: str) -> AsyncIterator[Redis]:
    """The production client (bounded blocking pool, autobot.redis_pool) on a flushed database."""
    client = create_redis(RedisConfig(url=url))
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


@contextlib.asynccontextmanager
async def loop_gaps(interval_s: float = 0.005) -> AsyncIterator[list[float]]:
    """Drift of a perf_counter sleep probe while the block runs: how late the event loop woke it, in s.

    A blocked loop shows as a gap as long as the block; a free loop stays within a few milliseconds.
    """
    gaps: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(interval_s)
            gaps.append(time.perf_counter() - start - interval_s)

    task = asyncio.create_task(probe())
    try:
        yield gaps
    finally:
        stop.set()
        await task
