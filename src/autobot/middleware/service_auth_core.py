"""The core of service authentication, shared by the two phase middlewares: verify, audit, act on refusals.

`ServiceAuthMiddlewareBase` is pure ASGI: it builds the auth components (keyring, matrix, replay store, audit
log) on lifespan start-up, runs `verify_head` on the request line and headers, and only for a request that
passed it reads the body (up to the route's limit from the matrix, `buffered_body`) and runs `verify_body`.
So a stranger costs its headers and nothing more: no body byte is read before the request is authenticated
(docs/architecture.md, "Verification"). It writes the audit line and hands the decision to its subclass.

The two subclasses (`service_auth_logging`, `service_auth_enforcement`) differ only in what they do with a
refusal (pass it on, or answer it), in how long they wait for the replay store (each reads its own setting)
and in whether a failed start-up of the auth components stops the service. Which one runs is decided by the
deployed ASGI entry file, never by a setting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autobot.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, SecurityConfig, ServiceConfig
from autobot.middleware.asgi import content_length, error_code, error_response, header
from autobot.middleware.buffered_body import read_body, replaying_receive
from autobot.redis_pool import create_redis
from autobot.security import decision as reasons
from autobot.security.audit import AuditLog, Phase, audit_line
from autobot.security.decision import Decision
from autobot.security.keyring import Keyring
from autobot.security.keys import is_service_id
from autobot.security.matrix import Matrix
from autobot.security.replay import NonceChecker, NonceStore
from autobot.security.verify import RawRequest, VerifyContext, verify_body, verify_head

# After a failed component build, requests do not retry it more often than this (no file reads per request).
REBUILD_INTERVAL_S = 10.0
# Handlers may read the decision (e.g. the verified caller) from the scope under this key.
SCOPE_KEY = "autobot.service_auth"
# The caller key ids the middleware accepts (ids only, never keys), for the health answer: the versions this
# process loaded at start, which is what a rotation checks before it moves on.
VERIFYING_KEYS_SCOPE_KEY = "autobot.verifying_keys"
log = logging.getLogger("autobot.service_auth")


class AuthSetupError(Exception):
    """The auth components cannot be built from the configuration."""


@dataclass
class _Components:
    ctx: VerifyContext
    audit: AuditLog
    owned_redis: Redis | None
    owned_nonces: NonceStore | None
    owns_audit: bool


def _claimed_caller(scope: Scope) -> str | None:
    value = header(scope, b"x-service-id")
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    return text if is_service_id(text) else None


def _raw_target(scope: Scope) -> tuple[bytes, bytes]:
    raw_path = scope.get("raw_path")
    if not raw_path:
        # Without raw_path the decoded path is all there is; re-encoding it would sign something never sent,
        # so fall back to a value the path check refuses.
        raw_path = b"\x00"
    path, _, embedded_query = bytes(raw_path).partition(b"?")
    return path, bytes(scope.get("query_string") or embedded_query)


def _has_body(scope: Scope) -> bool:
    """Whether the request says a body follows (a Content-Length above 0, or a Transfer-Encoding)."""
    length = content_length(scope)
    return bool(length) or header(scope, b"transfer-encoding") is not None


async def send_refusal(
    scope: Scope, receive: Receive, send: Send, status: int, reason: str, *, close: bool = False
) -> None:
    """Answer a refused request: the JSON error shape for HTTP (`detail` is the decision's reason, as in the
    audit log), a policy-violation close for a WebSocket handshake. `close`: the client may still be sending
    a body nobody will read, so the server closes the connection after the answer instead of reading the
    body to its end (a client still sending then may see the connection reset instead of the answer)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:100]})
        return
    # Refusals depend on time, keys and the replay store: never cache one; a 503 is worth retrying soon.
    headers = {"cache-control": "no-store"}
    if status == 503:
        headers["retry-after"] = "1"
    if close:
        headers["connection"] = "close"
    await error_response(status, error_code(status), reason, headers=headers)(scope, receive, send)


class ServiceAuthMiddlewareBase:
    """Verify every request with `verify_request`, audit the decision, then let the subclass act on refusals.

    Built from `config` (keys dir, matrix file, audit log and a Redis client of its own, created lazily and
    closed on lifespan shutdown) or from explicit components (tests); explicit components are never closed
    here.
    """

    phase: ClassVar[Phase]
    # Whether the service must not start when the auth components cannot be built.
    fail_startup_without_auth: ClassVar[bool]

    def __init__(
        self,
        app: ASGIApp,
        config: ServiceConfig | None = None,
        *,
        service_id: str | None = None,
        keyring: Keyring | None = None,
        matrix: Matrix | None = None,
        redis: Redis | None = None,
        nonces: NonceChecker | None = None,
        audit: AuditLog | None = None,
        max_body_bytes: int | None = None,
        max_header_bytes: int | None = None,
        replay_timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Limits left None come from the config's `security` section (or its defaults without one):
        `max_body_bytes` for grants that name no limit, `max_header_bytes`, and `replay_timeout_s`, how
        long a request waits for the replay store this middleware builds (this phase's own setting,
        `replay_wait_ms`; a checker given as `nonces` bounds its own waits)."""
        if config is None and service_id is None:
            raise ValueError("give a ServiceConfig or a service_id")
        if config is not None and service_id is not None and service_id != config.service_id:
            raise ValueError(f"service_id {service_id!r} does not match the config ({config.service_id!r})")
        self.app = app
        self.service_id: str = config.service_id if config is not None else str(service_id)
        self._config = config
        self._keyring = keyring
        self._matrix = matrix
        self._redis = redis
        self._nonces = nonces
        self._audit = audit
        security = config.security if config is not None else None
        if max_body_bytes is None:
            max_body_bytes = security.max_body_bytes if security else DEFAULT_MAX_BODY_BYTES
        if max_header_bytes is None:
            max_header_bytes = security.max_header_bytes if security else DEFAULT_MAX_HEADER_BYTES
        if replay_timeout_s is None:
            replay_timeout_s = self.replay_wait_ms(security) / 1000
        self._max_body_bytes = max_body_bytes
        self._max_header_bytes = max_header_bytes
        self._replay_timeout_s = replay_timeout_s
        self._clock = clock
        self._components: _Components | None = None
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self.last_error: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def on_refused(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, *, stranger_body: bool
    ) -> None:
        """Act on a refusal. `stranger_body`: the request is not authenticated and says a body follows,
        none of which was read (an authenticated caller's refusal is answered after its body, so it gets
        the answer rather than a reset connection)."""
        raise NotImplementedError

    @classmethod
    def replay_wait_ms(cls, security: SecurityConfig | None) -> int:
        """How long this phase lets a request wait for the replay store (Redis)."""
        raise NotImplementedError

    # -- components --

    async def _build(self) -> _Components:
        security = self._config.security if self._config is not None else None

        def required(what: str) -> Any:
            if security is None:
                raise AuthSetupError(
                    f"{self.service_id}: no {what} given and the config has no security section"
                )
            return security

        skew = security.clock_skew_s if security else 300
        nonce_ttl = security.nonce_ttl_s if security else 600
        if self._nonces is None and nonce_ttl < 2 * skew:
            # A request passes the time check for 2 x skew seconds; a nonce forgotten sooner can be replayed.
            raise AuthSetupError(
                f"{self.service_id}: security.nonce_ttl_s ({nonce_ttl}) must be at least twice "
                f"security.clock_skew_s ({skew}), or a request could be replayed once its nonce expired"
            )
        keyring = self._keyring
        if keyring is None:
            keyring = await asyncio.to_thread(Keyring.load_dir, required("keyring").keys_dir, self.service_id)
        matrix = self._matrix
        if matrix is None:
            matrix = await asyncio.to_thread(Matrix.load, required("matrix").matrix_file, self.service_id)
        audit = self._audit
        if audit is None:
            audit = await asyncio.to_thread(AuditLog.open, required("audit log").audit_log)
        owned_redis: Redis | None = None
        owned_nonces: NonceStore | None = None
        nonces = self._nonces
        if nonces is None:
            redis = self._redis
            if redis is None:
                if self._config is None:
                    raise AuthSetupError(
                        f"{self.service_id}: no redis client given and no config to build one"
                    )
                try:
                    # In a thread: it reads the password file. No connection is made yet. No retries from
                    # redis-py: the nonce store retries a lost connection itself, once, in a way that
                    # cannot call its own first write a replay (security/replay.py).
                    nonce_store = self._config.redis.model_copy(update={"retries": 0})
                    redis = owned_redis = await asyncio.to_thread(create_redis, nonce_store)
                except Exception:
                    if self._audit is None:
                        await asyncio.to_thread(audit.close)
                    raise
            nonces = owned_nonces = NonceStore(redis, nonce_ttl, wait_s=self._replay_timeout_s)
        ctx = VerifyContext(
            callee=self.service_id,
            keyring=keyring,
            matrix=matrix,
            nonces=nonces,
            algorithm=security.algorithm if security else "hmac-sha256",
            clock_skew_s=skew,
            max_body_bytes=self._max_body_bytes,
            max_header_bytes=self._max_header_bytes,
        )
        return _Components(
            ctx=ctx,
            audit=audit,
            owned_redis=owned_redis,
            owned_nonces=owned_nonces,
            owns_audit=self._audit is None,
        )

    async def components(self, *, retry_now: bool = False) -> _Components | None:
        if self._components is not None:
            return self._components
        async with self._lock:
            if self._components is not None:
                return self._components
            now = time.monotonic()
            if not retry_now and self._failed_at is not None and now - self._failed_at < REBUILD_INTERVAL_S:
                return None
            try:
                self._components = await self._build()
            except Exception as exc:
                self._failed_at = now
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("service auth (%s phase) unavailable for %s: %s", self.phase, self.service_id, exc)
                return None
            self.last_error = None
            return self._components

    async def aclose(self) -> None:
        components, self._components = self._components, None
        if components is None:
            return
        try:
            if components.owned_nonces is not None:
                await components.owned_nonces.aclose()
            if components.owned_redis is not None:
                await components.owned_redis.aclose(close_connection_pool=True)
        finally:  # the audit lines still queued are written whatever happened to Redis
            if components.owns_audit:
                await asyncio.to_thread(components.audit.close)

    # -- lifespan --

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                ready = await self.components(retry_now=True)
                if ready is None and self.fail_startup_without_auth:
                    message = {
                        "type": "lifespan.startup.failed",
                        "message": f"service auth: {self.last_error}",
                    }
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        await self.app(scope, receive, send_wrapper)

    # -- requests --

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = "GET" if scope["type"] == "websocket" else str(scope["method"])
        raw_path, query_string = _raw_target(scope)
        components = await self.components()
        if components is None:
            refused = Decision(503, reasons.AUTH_UNAVAILABLE, "service", _claimed_caller(scope))
            scope[SCOPE_KEY] = refused
            await self.on_refused(scope, receive, send, refused, stranger_body=_has_body(scope))
            return
        ctx = components.ctx
        scope[VERIFYING_KEYS_SCOPE_KEY] = ctx.keyring.verifying_key_ids
        request = RawRequest(method, raw_path, query_string, scope.get("headers", ()))
        head = verify_head(request, ctx, now=self._clock())
        stranger_body = False
        if isinstance(head, Decision):
            decision = head  # refused (or public) on the request line and headers: no body byte was read
            # Refused before it authenticated (every refusal here but a 403, which comes after the MAC):
            # its body is never read.
            stranger_body = decision.status not in (200, 403) and _has_body(scope)
        elif scope["type"] != "http":
            decision = await verify_body(head, b"", ctx)  # a WebSocket handshake has no body
        else:
            body = await read_body(receive, head.body_limit, content_length(scope))
            if body.disconnected:
                return
            receive = replaying_receive(body, receive)
            if body.too_large:
                decision = Decision(413, reasons.BODY_TOO_LARGE, "service", head.caller, head.keyid)
            else:
                decision = await verify_body(head, body.joined(), ctx)
        components.audit.write_line(
            audit_line(
                decision=decision,
                callee=self.service_id,
                method=method,
                raw_path=raw_path,
                phase=self.phase,
                when=datetime.fromtimestamp(self._clock(), UTC),
            )
        )
        scope[SCOPE_KEY] = decision
        if decision.allowed:
            await self.app(scope, receive, send)
        else:
            await self.on_refused(scope, receive, send, decision, stranger_body=stranger_body)
