"""browser-service: browser sessions (/api/sessions, /api/sessions/{id}, GET /api/health).

No browser engine runs on these hosts, so a session is a record, not a page: it holds the URL to visit and
says plainly `state: "created"`, `engine: null`. The record lives in Redis `sessions:<id>` with a TTL, and
its id in the set `sessions:index`; ids of expired records leave the set when a listing meets them.
Commands stay inside the browser-service ACL (GET SET DEL EXPIRE SADD SREM SMEMBERS; no MULTI, no MGET).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio import Redis
from redis.exceptions import RedisError

from autobot.config import ServiceConfig
from autobot.middleware.body_size_limit import post_body_limit
from autobot.services.http.app import service_app
from autobot.services.http.errors import ApiError
from autobot.services.http.health import Readiness
from autobot.services.http.lifespan import open_redis

SERVICE_ID = "browser-service"
INDEX_KEY = "sessions:index"
MAX_URL_LENGTH = 2048
MIN_TTL_S, MAX_TTL_S, DEFAULT_TTL_S = 60, 86_400, 1800
MAX_BODY_BYTES = 16 * 1024
MAX_LISTED = 1000
ENGINE_NOTE = "no browser engine runs on this host: the session is recorded, no page is loaded"

SessionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="a session id (32 hex digits)")]


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=MAX_URL_LENGTH)
    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=MIN_TTL_S, le=MAX_TTL_S)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return validate_url(value)


# --- pure functions -------------------------------------------------------------------------------------


def validate_url(value: str) -> str:
    """Return `value` if it is an absolute http(s) URL with a host and no whitespace or control characters."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("url must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("url must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("url must name a host")
    return value


def session_key(session_id: str) -> str:
    return f"sessions:{session_id}"


def new_session(url: str, ttl_s: int, now: float) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "url": url,
        "state": "created",
        "engine": None,
        "note": ENGINE_NOTE,
        "created_at": now,
        "expires_at": now + ttl_s,
        "ttl_s": ttl_s,
    }


def decode_session(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored record, or None when absent or not a record (never a 500 for one bad entry)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("id"), str) else None


# --- I/O ------------------------------------------------------------------------------------------------


def _unavailable(exc: RedisError) -> ApiError:
    return ApiError(503, "redis_unavailable", f"session store unavailable: {type(exc).__name__}")


async def store_session(redis: Redis, session: Mapping[str, Any]) -> None:
    ttl_s = int(session["ttl_s"])
    # No MULTI (not in the ACL): the record is written first, so the index never names a session that
    # was not stored; a crash between the two only leaves a record that expires by itself.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(session_key(session["id"]), json.dumps(session), ex=ttl_s)
        pipe.sadd(INDEX_KEY, session["id"])
        # The index lives as long as its longest-lived session: NX sets a first TTL, GT only ever extends it.
        pipe.expire(INDEX_KEY, ttl_s, nx=True)
        pipe.expire(INDEX_KEY, ttl_s, gt=True)
        await pipe.execute()


async def load_session(redis: Redis, session_id: str) -> dict[str, Any] | None:
    return decode_session(await redis.get(session_key(session_id)))


async def delete_session(redis: Redis, session_id: str) -> bool:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(session_key(session_id))
        pipe.srem(INDEX_KEY, session_id)
        deleted, _ = await pipe.execute()
    return bool(deleted)


async def list_sessions(redis: Redis) -> list[dict[str, Any]]:
    ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in await redis.smembers(INDEX_KEY))
    ids = ids[:MAX_LISTED]
    if not ids:
        return []
    # GET per id in one round trip (MGET is not in the ACL).
    async with redis.pipeline(transaction=False) as pipe:
        for session_id in ids:
            pipe.get(session_key(session_id))
        raws = await pipe.execute()
    sessions, expired = [], []
    for session_id, raw in zip(ids, raws, strict=True):
        record = decode_session(raw)
        if record is None:
            expired.append(session_id)
        else:
            sessions.append(record)
    if expired:
        await redis.srem(INDEX_KEY, *expired)
    sessions.sort(key=lambda s: (s.get("created_at", 0), s["id"]))
    return sessions


def create_app(config: ServiceConfig) -> FastAPI:
    readiness = Readiness(timeout_s=config.redis.socket_timeout_s)

    async def setup(app: FastAPI, stack: contextlib.AsyncExitStack) -> None:
        app.state.redis = open_redis(config.redis, stack, readiness)

    app = service_app(SERVICE_ID, setup, readiness, body_limit=post_body_limit(MAX_BODY_BYTES))

    def redis_of(request: Request) -> Redis:
        client: Redis = request.app.state.redis
        return client

    @app.post("/api/sessions", status_code=201)
    async def create_session(body: CreateSession, request: Request) -> dict[str, Any]:
        session = new_session(body.url, body.ttl_s, time.time())
        try:
            await store_session(redis_of(request), session)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return session

    @app.get("/api/sessions")
    async def get_sessions(request: Request) -> dict[str, Any]:
        try:
            sessions = await list_sessions(redis_of(request))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return {"sessions": sessions, "count": len(sessions)}

    @app.get("/api/sessions/{session_id}")
    async def get_session(session_id: SessionId, request: Request) -> dict[str, Any]:
        try:
            session = await load_session(redis_of(request), session_id)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if session is None:
            raise ApiError(404, "session_not_found", f"no session {session_id} (never created, or expired)")
        return session

    @app.delete("/api/sessions/{session_id}", status_code=204)
    async def remove_session(session_id: SessionId, request: Request) -> Response:
        try:
            deleted = await delete_session(redis_of(request), session_id)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        if not deleted:
            raise ApiError(404, "session_not_found", f"no session {session_id} (never created, or expired)")
        return Response(status_code=204)

    return app
