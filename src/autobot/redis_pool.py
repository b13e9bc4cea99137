"""The one way the services open Redis: asyncio client, bounded blocking pool, timeouts, explicit retry."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from autobot.config import RedisConfig


def is_pool_exhausted(exc: BaseException) -> bool:
    """Whether a Redis error means "every pooled connection stayed busy for the pool's whole wait".

    redis-py raises that as a ConnectionError raised from a TimeoutError, like a refused connection; the
    cause tells them apart. It means the service is busy, not that Redis is down: callers answer "retry
    shortly" instead of "unavailable".
    """
    return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, TimeoutError)


def read_secret_file(path: Path) -> str:
    """Read a one-line secret file; the error names the file, never the content."""
    p = Path(path)
    try:
        value = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise RuntimeError(f"cannot read secret file {p}: {exc.strerror or exc}") from exc
    if not value:
        raise RuntimeError(f"secret file {p} is empty")
    return value


def create_redis(cfg: RedisConfig) -> Redis:
    """Build the client; no connection is made until the first command (so start-up never blocks on Redis)."""
    password = read_secret_file(cfg.password_file) if cfg.password_file else None
    # Retries are explicit because redis-py changed its default between 5.x (off) and 6+ (on).
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=cfg.retries)
    pool = BlockingConnectionPool.from_url(
        cfg.url,
        max_connections=cfg.max_connections,
        timeout=cfg.pool_timeout_s,
        username=cfg.username,
        password=password,
        socket_timeout=cfg.socket_timeout_s,
        socket_connect_timeout=cfg.connect_timeout_s,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        client_name=cfg.client_name,
        decode_responses=False,
    )
    # from_pool: the client owns the pool, so `await client.aclose()` also closes every pooled connection.
    return Redis.from_pool(pool)
