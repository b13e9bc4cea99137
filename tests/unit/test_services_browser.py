"""browser-service: session records in Redis (as the browser-service ACL user) over real HTTP on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from tests.integration.cluster import create_acl_user, load_matrix, serving
from tests.support.redis_server import RedisServer, free_port

from autobot.config import ListenConfig, RedisConfig, ServiceConfig
from autobot.services.browser_service import (
    DEFAULT_TTL_S,
    INDEX_KEY,
    MAX_URL_LENGTH,
    create_app,
    session_key,
    validate_url,
)


def _config(redis: RedisConfig) -> ServiceConfig:
    return ServiceConfig(service_id="browser-service", listen=ListenConfig(port=3000), redis=redis)


@pytest.mark.parametrize("url", ["https://example.org/", "http://127.0.0.1:8080/a?b=c#d", "https://[::1]/x"])
def test_valid_urls(url: str) -> None:
    assert validate_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.org/", "http"),
        ("javascript:alert(1)", "http"),
        ("https:///nohost", "host"),
        ("https://exa mple.org/", "whitespace"),
        ("https://example.org/\x00", "control"),
        ("example.org", "http"),
    ],
)
def test_invalid_urls(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_url(url)


@pytest.fixture
async def browser(redis_server: RedisServer, redis_client: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The app on loopback, using Redis as a user with exactly browser-service's matrix rules."""
    username, password = await create_acl_user(redis_client, load_matrix(), "browser-service")
    secret = redis_server.workdir / f"{username}.password"
    secret.write_text(password)
    redis = RedisConfig(url=redis_server.url, username=username, password_file=secret)
    async with serving(create_app(_config(redis))) as url, httpx.AsyncClient(base_url=url) as client:
        yield client
    await redis_client.execute_command("ACL", "DELUSER", username)


async def test_session_lifecycle(browser: httpx.AsyncClient, redis_client: Redis) -> None:
    created = await browser.post("/api/sessions", json={"url": "https://example.org/docs", "ttl_s": 120})
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["state"] == "created"
    assert session["engine"] is None
    assert "no browser engine" in session["note"]
    assert session["url"] == "https://example.org/docs"
    sid = session["id"]

    # Stored as the matrix says: a record with a TTL, and its id in the index (which expires too).
    assert json.loads(await redis_client.get(session_key(sid)) or b"") == session
    assert 110 <= await redis_client.ttl(session_key(sid)) <= 120
    assert await redis_client.smembers(INDEX_KEY) == {sid.encode()}
    assert 110 <= await redis_client.ttl(INDEX_KEY) <= 120

    fetched = await browser.get(f"/api/sessions/{sid}")
    assert fetched.status_code == 200
    assert fetched.json() == session
    listed = await browser.get("/api/sessions")
    assert listed.json() == {"sessions": [session], "count": 1}

    deleted = await browser.delete(f"/api/sessions/{sid}")
    assert deleted.status_code == 204
    assert await redis_client.exists(session_key(sid)) == 0
    assert await redis_client.smembers(INDEX_KEY) == set()
    gone = await browser.get(f"/api/sessions/{sid}")
    assert gone.status_code == 404
    assert gone.json()["error"] == "session_not_found"
    assert (await browser.delete(f"/api/sessions/{sid}")).status_code == 404


async def test_index_ttl_only_grows(browser: httpx.AsyncClient, redis_client: Redis) -> None:
    await browser.post("/api/sessions", json={"url": "https://a.example/", "ttl_s": 600})
    await browser.post("/api/sessions", json={"url": "https://b.example/", "ttl_s": 60})
    assert await redis_client.ttl(INDEX_KEY) > 500
    default = await browser.post("/api/sessions", json={"url": "https://c.example/"})
    assert default.json()["ttl_s"] == DEFAULT_TTL_S
    assert await redis_client.ttl(INDEX_KEY) > 600


async def test_listing_drops_expired_ids(browser: httpx.AsyncClient, redis_client: Redis) -> None:
    kept = (await browser.post("/api/sessions", json={"url": "https://kept.example/"})).json()
    expired = (await browser.post("/api/sessions", json={"url": "https://gone.example/"})).json()
    await redis_client.delete(session_key(expired["id"]))  # what expiry does to the record

    listed = await browser.get("/api/sessions")
    assert [s["id"] for s in listed.json()["sessions"]] == [kept["id"]]
    assert await redis_client.smembers(INDEX_KEY) == {kept["id"].encode()}


async def test_invalid_requests(browser: httpx.AsyncClient) -> None:
    cases: list[object] = [
        {"url": "ftp://example.org/"},
        {"url": "https://example.org/" + "a" * MAX_URL_LENGTH},
        {"url": "https://example.org/", "ttl_s": 10},
        {"url": "https://example.org/", "ttl_s": 10**6},
        {"url": "https://example.org/", "browser": "chromium"},
        {},
    ]
    for payload in cases:
        response = await browser.post("/api/sessions", json=payload)
        assert response.status_code == 422, (payload, response.text)
    for bad_id in ["nothex", "A" * 32, "0" * 31, "..%2F..%2Fetc"]:
        assert (await browser.get(f"/api/sessions/{bad_id}")).status_code in (404, 422), bad_id


async def test_redis_down_is_503() -> None:
    redis = RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", retries=0, connect_timeout_s=0.2)
    async with serving(create_app(_config(redis))) as url, httpx.AsyncClient(base_url=url) as client:
        created = await client.post("/api/sessions", json={"url": "https://example.org/"})
        listed = await client.get("/api/sessions")
    assert created.status_code == 503
    assert created.json()["error"] == "redis_unavailable"
    assert listed.status_code == 503
