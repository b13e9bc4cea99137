"""npu-worker: CPU feature extraction for the cluster (POST /api/process, GET /api/health).

Two tasks, both deterministic so results can be cached and compared across machines:
- `embed`: a hashed bag-of-words vector per text (feature hashing with a sign bit, L2-normalised), the
  kind of cheap embedding a retrieval pre-filter uses. Cached in Redis under `cache:npu:embed:*`.
- `digest`: the SHA-256 of each text's UTF-8 bytes.

The work runs in a thread so a large batch never stalls the event loop (and with it signature checks and
health probes). Redis is an optimisation here: when it fails, results are computed and the request succeeds.
Only GET/SET/MGET are used, all inside the npu-worker ACL (`~cache:* ~vectors:*`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from redis.asyncio import Redis
from redis.exceptions import RedisError

from autobot.config import ServiceConfig
from autobot.middleware.body_size_limit import post_body_limit
from autobot.services.http.app import service_app
from autobot.services.http.health import Readiness
from autobot.services.http.lifespan import open_redis

log = logging.getLogger(__name__)

SERVICE_ID = "npu-worker"
# API limits (part of the contract with callers, not deployment settings).
MAX_TEXTS = 64
MAX_TEXT_CHARS = 32_768
MAX_TOTAL_CHARS = 262_144
# Checked before the body is read: JSON escaping can at most ~6x a character, this caps what is parsed.
MAX_BODY_BYTES = 2 * 1024 * 1024
MIN_DIMENSIONS, MAX_DIMENSIONS, DEFAULT_DIMENSIONS = 8, 4096, 256
CACHE_TTL_S = 3600
# Bump when the embedding function changes, so old cached vectors are never served for new code.
EMBED_VERSION = "v1"

_WORD = re.compile(r"\w+", re.UNICODE)

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["embed", "digest"] = "embed"
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)
    dimensions: int = Field(default=DEFAULT_DIMENSIONS, ge=MIN_DIMENSIONS, le=MAX_DIMENSIONS)

    @model_validator(mode="after")
    def _total_size(self) -> ProcessRequest:
        total = sum(len(t) for t in self.texts)
        if total > MAX_TOTAL_CHARS:
            raise ValueError(f"texts hold {total} characters in total; the limit is {MAX_TOTAL_CHARS}")
        return self


# --- pure functions -------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode letters, digits and underscore)."""
    return _WORD.findall(text.lower())


def _bucket(token: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    # The lowest bit picks the sign so that collisions cancel on average instead of piling up.
    return (value >> 1) % dimensions, (1.0 if value & 1 else -1.0)


def hashed_embedding(text: str, dimensions: int) -> list[float]:
    """The L2-normalised signed feature-hashing vector of `text`'s words (all zeros if it has none)."""
    if not MIN_DIMENSIONS <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"dimensions must be between {MIN_DIMENSIONS} and {MAX_DIMENSIONS}")
    vector = [0.0] * dimensions
    for token in tokenize(text):
        index, sign = _bucket(token, dimensions)
        vector[index] += sign
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed_cache_key(text: str, dimensions: int) -> str:
    # Keyed by a digest of the text, so no caller data ends up in key names.
    return f"cache:npu:embed:{EMBED_VERSION}:{dimensions}:{sha256_hex(text)}"


def embed_all(texts: Sequence[str], dimensions: int) -> list[list[float]]:
    return [hashed_embedding(t, dimensions) for t in texts]


def digest_all(texts: Sequence[str]) -> list[str]:
    return [sha256_hex(t) for t in texts]


def decode_cached_vector(raw: bytes | str | None, dimensions: int) -> list[float] | None:
    """A cached vector, or None when absent or unusable (a bad entry is recomputed, never served)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not (isinstance(value, list) and len(value) == dimensions):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


# --- I/O ------------------------------------------------------------------------------------------------


async def _cached_embeddings(redis: Redis, texts: Sequence[str], dimensions: int) -> list[list[float] | None]:
    keys = [embed_cache_key(t, dimensions) for t in texts]
    try:
        raw = await redis.mget(keys)
    except RedisError as exc:
        log.warning("npu-worker cache read failed, computing without it: %s", exc)
        return [None] * len(texts)
    return [decode_cached_vector(r, dimensions) for r in raw]


async def _store_embeddings(redis: Redis, items: Sequence[tuple[str, list[float]]], dimensions: int) -> None:
    try:
        # Not a MULTI transaction: the npu-worker ACL has no +multi, and each entry stands alone.
        async with redis.pipeline(transaction=False) as pipe:
            for text, vector in items:
                pipe.set(embed_cache_key(text, dimensions), json.dumps(vector), ex=CACHE_TTL_S)
            await pipe.execute()
    except RedisError as exc:
        log.warning("npu-worker cache write failed: %s", exc)


async def embed_with_cache(
    redis: Redis, texts: Sequence[str], dimensions: int
) -> tuple[list[list[float]], int]:
    """Vectors for `texts` (cached from Redis, the rest computed off the loop) and the cache hit count."""
    cached = await _cached_embeddings(redis, texts, dimensions)
    missing = sorted({t for t, c in zip(texts, cached, strict=True) if c is None})
    computed: dict[str, list[float]] = {}
    if missing:
        computed = dict(zip(missing, await asyncio.to_thread(embed_all, missing, dimensions), strict=True))
        await _store_embeddings(redis, list(computed.items()), dimensions)
    vectors = [c if c is not None else computed[t] for t, c in zip(texts, cached, strict=True)]
    return vectors, sum(c is not None for c in cached)


def create_app(config: ServiceConfig) -> FastAPI:
    readiness = Readiness(timeout_s=config.redis.socket_timeout_s)

    async def setup(app: FastAPI, stack: contextlib.AsyncExitStack) -> None:
        app.state.redis = open_redis(config.redis, stack, readiness)

    app = service_app(SERVICE_ID, setup, readiness, body_limit=post_body_limit(MAX_BODY_BYTES))

    @app.post("/api/process")
    async def process(job: ProcessRequest, request: Request) -> dict[str, Any]:
        if job.task == "digest":
            digests = await asyncio.to_thread(digest_all, job.texts)
            return {"task": "digest", "algorithm": "sha256", "results": digests, "count": len(digests)}
        vectors, hits = await embed_with_cache(request.app.state.redis, job.texts, job.dimensions)
        return {
            "task": "embed",
            "method": f"hashed-bag-of-words-{EMBED_VERSION}",
            "dimensions": job.dimensions,
            "results": vectors,
            "count": len(vectors),
            "cache_hits": hits,
        }

    return app
