"""npu-worker: the embedding and digest work, its Redis cache (inside the service's real ACL), and its API
over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from tests.integration.cluster import create_acl_user, load_matrix, serving
from tests.support.redis_server import RedisServer, free_port

from autobot.config import ListenConfig, RedisConfig, ServiceConfig
from autobot.services import npu_worker
from autobot.services.npu_worker import (
    MAX_BODY_BYTES,
    MAX_TEXTS,
    MAX_TOTAL_CHARS,
    create_app,
    decode_cached_vector,
    embed_cache_key,
    hashed_embedding,
    tokenize,
)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _config(redis: RedisConfig) -> ServiceConfig:
    return ServiceConfig(service_id="npu-worker", listen=ListenConfig(port=8081), redis=redis)


# --- pure functions ---------------------------------------------------------------------------------------


def test_tokenize_lowercases_unicode_words() -> None:
    assert tokenize("Hello, WORLD! Grüße 42_x") == ["hello", "world", "grüße", "42_x"]


def test_embedding_is_unit_length_deterministic_and_sized() -> None:
    vector = hashed_embedding("Redis keeps the chat history in lists", 64)
    assert len(vector) == 64
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0)
    assert vector == hashed_embedding("redis KEEPS the chat history, in lists!", 64)


def test_embedding_of_text_without_words_is_zero() -> None:
    assert hashed_embedding("?!  ...", 16) == [0.0] * 16


def test_embedding_similarity_follows_shared_words() -> None:
    a = hashed_embedding("the redis acl user for the npu worker", 256)
    b = hashed_embedding("redis acl user of the npu worker", 256)
    c = hashed_embedding("sourdough bread needs flour water salt", 256)
    assert _cosine(a, b) > 0.7
    assert abs(_cosine(a, c)) < 0.3


@pytest.mark.parametrize("dimensions", [0, 7, 4097])
def test_embedding_refuses_bad_dimensions(dimensions: int) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        hashed_embedding("x", dimensions)


def test_cache_key_names_no_caller_text() -> None:
    key = embed_cache_key("secret patient name", 32)
    assert key.startswith("cache:npu:embed:v1:32:")
    assert "secret" not in key
    assert key.endswith(hashlib.sha256(b"secret patient name").hexdigest())


@pytest.mark.parametrize(
    "raw", [b"not json", b'{"a": 1}', b"[1.0, 2.0]", b"[true, 1.0, 2.0]", b'["a","b","c"]']
)
def test_bad_cache_entries_are_ignored(raw: bytes) -> None:
    assert decode_cached_vector(raw, 3) is None


def test_good_cache_entry_is_read() -> None:
    assert decode_cached_vector(b"[1, 0.5, -0.25]", 3) == [1.0, 0.5, -0.25]


# --- over HTTP, with Redis as the npu-worker ACL user ------------------------------------------------------


@pytest.fixture
async def acl_redis_config(redis_server: RedisServer, redis_client: Redis) -> AsyncIterator[RedisConfig]:
    """Redis as a user with exactly npu-worker's matrix rules, so a command outside them fails the test."""
    username, password = await create_acl_user(redis_client, load_matrix(), "npu-worker")
    secret = redis_server.workdir / f"{username}.password"
    secret.write_text(password)
    yield RedisConfig(url=redis_server.url, username=username, password_file=secret)
    await redis_client.execute_command("ACL", "DELUSER", username)


@pytest.fixture
async def npu(acl_redis_config: RedisConfig) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serving(create_app(_config(acl_redis_config))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def test_health_is_public_liveness(npu: httpx.AsyncClient) -> None:
    response = await npu.get("/api/health")
    assert response.status_code == 200
    assert response.json()["service"] == "npu-worker"
    # Without a service-auth middleware nothing is verified, and npu-worker signs nothing.
    assert response.json()["keys"] == {"signing": [], "verifying": None}


async def test_ready_pings_redis_as_its_acl_user(npu: httpx.AsyncClient) -> None:
    response = await npu.get("/api/ready")
    assert response.status_code == 200, response.text


async def test_embed_computes_then_serves_from_cache(npu: httpx.AsyncClient, redis_client: Redis) -> None:
    texts = ["alpha beta", "gamma delta", "alpha beta"]
    first = await npu.post("/api/process", json={"texts": texts, "dimensions": 32})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["task"] == "embed"
    assert body["count"] == 3
    assert body["cache_hits"] == 0
    assert body["results"][0] == body["results"][2] == hashed_embedding("alpha beta", 32)
    stored = await redis_client.get(embed_cache_key("gamma delta", 32))
    assert stored is not None
    assert json.loads(stored) == hashed_embedding("gamma delta", 32)
    assert 0 < await redis_client.ttl(embed_cache_key("gamma delta", 32)) <= npu_worker.CACHE_TTL_S

    second = await npu.post("/api/process", json={"texts": texts, "dimensions": 32})
    assert second.json()["cache_hits"] == 3
    assert second.json()["results"] == body["results"]


async def test_corrupt_cache_entry_is_recomputed(npu: httpx.AsyncClient, redis_client: Redis) -> None:
    await redis_client.set(embed_cache_key("alpha", 16), b"[0.5]")
    response = await npu.post("/api/process", json={"texts": ["alpha"], "dimensions": 16})
    assert response.json()["results"] == [hashed_embedding("alpha", 16)]
    assert response.json()["cache_hits"] == 0
    assert json.loads(await redis_client.get(embed_cache_key("alpha", 16)) or b"") == hashed_embedding(
        "alpha", 16
    )


async def test_digest_task(npu: httpx.AsyncClient) -> None:
    response = await npu.post("/api/process", json={"task": "digest", "texts": ["abc", "日本"]})
    assert response.status_code == 200
    assert response.json()["results"] == [
        hashlib.sha256(b"abc").hexdigest(),
        hashlib.sha256("日本".encode()).hexdigest(),
    ]


INVALID_PAYLOADS: list[object] = [
    {"texts": []},
    {"texts": ["x"] * (MAX_TEXTS + 1)},
    {"texts": ["x" * (MAX_TOTAL_CHARS // 8 + 1)] * 8},
    {"texts": ["x"], "dimensions": 5000},
    {"texts": ["x"], "task": "summarise"},
    {"texts": ["x"], "unexpected": 1},
    {"texts": "not a list"},
    ["x"],
]


async def test_invalid_requests_are_422(npu: httpx.AsyncClient) -> None:
    # One server for all cases: each case is a request, not a start-up.
    for payload in INVALID_PAYLOADS:
        response = await npu.post("/api/process", json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert response.json()["error"] == "invalid_request"


async def test_malformed_json_is_400(npu: httpx.AsyncClient) -> None:
    response = await npu.post(
        "/api/process", content=b'{"texts": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


async def test_oversize_body_is_413(npu: httpx.AsyncClient) -> None:
    response = await npu.post("/api/process", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413


async def test_works_without_redis() -> None:
    """The cache is an optimisation: with Redis down the work is still done."""
    redis = RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", retries=0, connect_timeout_s=0.2)
    async with serving(create_app(_config(redis))) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/process", json={"texts": ["alpha"], "dimensions": 16})
        ready = await client.get("/api/ready")
    assert response.status_code == 200
    assert response.json()["results"] == [hashed_embedding("alpha", 16)]
    assert ready.status_code == 503
