"""Issue 13 item 7: everything decidable from the request line and headers is refused before a body byte is
read, the body limit of a signed route comes from the matrix, and header sizes are capped.

In-process (the middleware called as ASGI, its `receive` watched), then against the real `autobot serve`
process of npu-worker, whose resident memory is measured from /proc while strangers upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from tests.security.auth_support import MATRIX_FILE, load_services, replace_header, signed_request
from tests.security.deployment import Deployment, Phase, ServedProcess
from tests.support.redis_server import RedisServer

from autobot.client.service_client import ServiceClient
from autobot.config import SecurityConfig
from autobot.middleware.service_auth_core import ServiceAuthMiddlewareBase
from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware
from autobot.middleware.service_auth_logging import ServiceAuthLoggingMiddleware
from autobot.security.audit import AuditLog
from autobot.security.keyring import Keyring
from autobot.security.matrix import Matrix, MatrixError
from autobot.security.signing import new_nonce
from autobot.security.verify import RawRequest

BODY = b'{"texts": ["' + b"x" * 1000 + b'"]}'
Message = dict[str, Any]


class Probe:
    """The ASGI side of one request: a `receive` that counts what the middleware or the app read, and the
    messages sent back."""

    def __init__(self, body: bytes, chunk: int = 64 * 1024) -> None:
        self.chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
        self.read_by_middleware = 0
        self.read_by_app = 0
        self.in_app = False
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if not self.chunks:
            await asyncio.sleep(3600)  # a client that never sends the rest
        chunk = self.chunks.pop(0)
        if self.in_app:
            self.read_by_app += 1
        else:
            self.read_by_middleware += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0].get("headers", []))

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def _app(probe: Probe) -> Callable[[Any, Any, Any], Awaitable[None]]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        probe.in_app = True
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        decision = scope.get("autobot.service_auth")
        answer = json.dumps(
            {"body_sha256": hashlib.sha256(body).hexdigest(), "decision": [decision.status, decision.reason]}
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    return app


def _scope(request: RawRequest, content_length: int | None) -> dict[str, Any]:
    headers = [(b"host", b"npu-worker"), *request.headers]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.raw_path.decode(),
        "raw_path": request.raw_path,
        "query_string": request.query_string,
        "root_path": "",
        "headers": headers,
    }


@pytest.fixture
def audit(tmp_path: Path) -> Any:
    log = AuditLog.open(tmp_path / "audit.log")
    yield log
    log.close()


Build = Callable[..., tuple[ServiceAuthMiddlewareBase, Probe]]


@pytest.fixture
def build(keyrings: dict[str, Keyring], redis_client: Redis, audit: AuditLog) -> Build:
    def make(
        phase: Phase = "enforcement",
        body: bytes = BODY,
        matrix: Matrix | None = None,
        **options: Any,
    ) -> tuple[ServiceAuthMiddlewareBase, Probe]:
        probe = Probe(body)
        cls = ServiceAuthEnforcementMiddleware if phase == "enforcement" else ServiceAuthLoggingMiddleware
        middleware = cls(
            _app(probe),
            service_id="npu-worker",
            keyring=keyrings["npu-worker"],
            matrix=matrix or Matrix.load(MATRIX_FILE, "npu-worker"),
            redis=redis_client,
            audit=audit,
            **options,
        )
        return middleware, probe

    return make


def _signed(
    keyrings: dict[str, Keyring],
    caller: str = "main-backend",
    method: str = "POST",
    path: bytes = b"/api/process",
    body: bytes = BODY,
    created: int | None = None,
) -> RawRequest:
    return signed_request(
        keyrings[caller],
        "npu-worker",
        method,
        path,
        body=body,
        created=int(time.time()) if created is None else created,
        nonce=new_nonce(),
    )


def _tamper_input(request: RawRequest, old: bytes, new: bytes) -> RawRequest:
    value = next(v for k, v in request.headers if k == b"signature-input")
    return replace_header(request, b"signature-input", value.replace(old, new))


def _drop(request: RawRequest, name: bytes) -> RawRequest:
    return dataclasses.replace(request, headers=[(k, v) for k, v in request.headers if k != name])


# Each case: a request whose line and headers alone say it must be refused, and the refusal.
HEADER_REFUSALS: dict[str, tuple[Callable[[dict[str, Keyring]], RawRequest], int, str]] = {
    "unsigned": (
        lambda k: RawRequest("POST", b"/api/process"),
        401,
        "missing_header:x-service-id",
    ),
    "no signature": (lambda k: _drop(_signed(k), b"signature"), 401, "missing_header:signature"),
    "malformed signature-input": (
        lambda k: replace_header(_signed(k), b"signature-input", b"autobot=(((("),
        401,
        "malformed_header:signature-input",
    ),
    "unknown caller": (
        lambda k: replace_header(_signed(k), b"x-service-id", b"frontend"),
        401,
        "unknown_caller",
    ),
    "created long ago": (lambda k: _signed(k, created=int(time.time()) - 3600), 401, "created_out_of_window"),
    "created in the future": (
        lambda k: _signed(k, created=int(time.time()) + 3600),
        401,
        "created_out_of_window",
    ),
    "forged signature": (
        lambda k: replace_header(_signed(k), b"signature", b"autobot=:" + b"A" * 43 + b"=:"),
        401,
        "bad_signature",
    ),
    "route not granted": (lambda k: _signed(k, caller="ai-stack", method="PUT"), 403, "not_granted"),
    "unsafe path": (lambda k: _signed(k, path=b"/api/../api/process"), 401, "unsafe_path"),
}
# Signature-Input edited after signing: (what, replaced by, reason).
INPUT_EDITS = {
    "keyid of another service": (b'keyid="main-backend:', b'keyid="ai-stack:', "keyid_mismatch"),
    "unknown key version": (b'keyid="main-backend:v1"', b'keyid="main-backend:v9"', "unknown_key_version"),
    "algorithm": (b'alg="hmac-sha256"', b'alg="hmac-sha512"', "bad_algorithm"),
}
for _case, (_old, _new, _reason) in INPUT_EDITS.items():
    HEADER_REFUSALS[_case] = (
        lambda k, old=_old, new=_new: _tamper_input(_signed(k), old, new),
        401,
        _reason,
    )


@pytest.mark.parametrize("case", sorted(HEADER_REFUSALS))
async def test_enforcement_refuses_on_the_headers_without_reading_the_body(
    case: str, build: Build, keyrings: dict[str, Keyring], redis_client: Redis
) -> None:
    make_request, status, reason = HEADER_REFUSALS[case]
    middleware, probe = build()
    request = make_request(keyrings)
    await middleware(_scope(request, len(BODY)), probe.receive, probe.send)
    assert (probe.status, probe.json()["detail"]) == (status, reason)
    assert probe.read_by_middleware == 0  # not one body message was asked for
    assert probe.read_by_app == 0
    # A stranger's body is never read, so its connection is not kept for another request. (A known caller
    # off its grants gets its 403 after its body, like any authenticated request.)
    assert (probe.headers.get(b"connection") == b"close") == (status != 403)
    assert await redis_client.dbsize() == 0  # nothing was stored for a refused request


@pytest.mark.parametrize("case", sorted(HEADER_REFUSALS))
async def test_logging_passes_header_refusals_on_without_buffering(
    case: str, build: Build, keyrings: dict[str, Keyring]
) -> None:
    make_request, status, reason = HEADER_REFUSALS[case]
    middleware, probe = build("logging")
    await middleware(_scope(make_request(keyrings), len(BODY)), probe.receive, probe.send)
    assert probe.status == 200
    assert probe.json()["decision"] == [status, reason]  # refused on paper
    assert probe.json()["body_sha256"] == hashlib.sha256(BODY).hexdigest()  # the app read it itself
    assert probe.read_by_middleware == 0


async def test_a_declared_body_over_the_route_limit_is_413_before_reading(
    build: Build, keyrings: dict[str, Keyring]
) -> None:
    middleware, probe = build(max_body_bytes=512)  # the default for grants that name no limit
    await middleware(_scope(_signed(keyrings), 15 * 1024 * 1024), probe.receive, probe.send)
    assert (probe.status, probe.json()["detail"]) == (413, "body_too_large")
    assert probe.read_by_middleware == 0


async def test_a_signed_request_reads_and_replays_its_body(
    build: Build, keyrings: dict[str, Keyring]
) -> None:
    body = bytes(range(256)) * 1000  # several chunks
    middleware, probe = build(body=body)
    await middleware(_scope(_signed(keyrings, body=body), len(body)), probe.receive, probe.send)
    assert probe.status == 200
    assert probe.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def _matrix_with(max_body_bytes: int | None) -> Matrix:
    services = load_services()
    grant: dict[str, Any] = {"methods": ["POST"], "path": "/api/process"}
    if max_body_bytes is not None:
        grant["max_body_bytes"] = max_body_bytes
    services["npu-worker"] = {**services["npu-worker"], "callers": {"main-backend": [grant]}}
    return Matrix.from_services(services, "npu-worker")


@pytest.mark.parametrize(("route_limit", "default", "allowed"), [(4096, 1024, 4096), (None, 1024, 1024)])
@pytest.mark.parametrize("declared", [True, False])
async def test_the_body_limit_of_a_signed_route_comes_from_the_matrix(
    route_limit: int | None,
    default: int,
    allowed: int,
    declared: bool,
    build: Build,
    keyrings: dict[str, Keyring],
) -> None:
    """A grant may name its `max_body_bytes`; without one, the configured default applies. Whether the size
    is declared (Content-Length) or only counted while reading (chunked), the limit is the same."""
    matrix = _matrix_with(route_limit)
    for size, expected in ((allowed, 200), (allowed + 1, 413)):
        body = b"y" * size
        middleware, probe = build(body=body, matrix=matrix, max_body_bytes=default)
        request = _signed(keyrings, body=body)
        await middleware(_scope(request, size if declared else None), probe.receive, probe.send)
        assert probe.status == expected, (size, declared)


def test_matrix_body_limits_are_checked_and_only_on_grants() -> None:
    assert _matrix_with(4096).granted_body_limit("main-backend", "POST", "/api/process", 1024) == 4096
    assert _matrix_with(None).granted_body_limit("main-backend", "POST", "/api/process", 1024) == 1024
    assert _matrix_with(4096).granted_body_limit("main-backend", "PUT", "/api/process", 1024) is None
    assert _matrix_with(4096).granted_body_limit("ai-stack", "POST", "/api/process", 1024) is None
    for bad in (0, -1, "1k", 1.5, True, 2**40):
        with pytest.raises(MatrixError, match="max_body_bytes"):
            _matrix_with(bad)  # type: ignore[arg-type]
    services = load_services()
    services["npu-worker"] = {
        **services["npu-worker"],
        "public": [{"methods": ["GET"], "path": "/api/health", "max_body_bytes": 10}],
    }
    with pytest.raises(MatrixError, match="public routes take the app's own body limit"):
        Matrix.from_services(services, "npu-worker")


@pytest.mark.parametrize(
    ("service", "module"),
    [("npu-worker", "npu_worker"), ("ai-stack", "ai_stack"), ("browser-service", "browser_service")],
)
def test_the_matrix_never_refuses_a_body_the_app_accepts(service: str, module: str) -> None:
    """Every POST grant lets through at least the app's own body limit, or legitimate calls would get 413
    from the middleware that the app would have served."""
    import importlib

    app_limit = importlib.import_module(f"autobot.services.{module}").MAX_BODY_BYTES
    default = SecurityConfig.model_fields["max_body_bytes"].default
    matrix = Matrix.from_services(load_services(), service)
    for caller, rules in matrix.grants.items():
        for rule in rules:
            if "POST" in rule.methods:
                limit = rule.max_body_bytes if rule.max_body_bytes is not None else default
                assert limit >= app_limit, (service, caller, rule)


async def test_oversized_headers_are_refused_before_anything_else(
    build: Build, keyrings: dict[str, Keyring]
) -> None:
    middleware, probe = build(max_header_bytes=4096)
    request = _signed(keyrings)
    padded = dataclasses.replace(request, headers=[*request.headers, (b"x-pad", b"p" * 5000)])
    await middleware(_scope(padded, len(BODY)), probe.receive, probe.send)
    assert (probe.status, probe.json()["detail"]) == (431, "headers_too_large")
    assert probe.read_by_middleware == 0
    # One signature header line repeated until it is over the per-header cap: malformed, not parsed.
    middleware, probe = build()
    repeated = dataclasses.replace(
        request, headers=[*request.headers, *[(b"signature", b"autobot=:" + b"A" * 43 + b"=:")] * 30]
    )
    await middleware(_scope(repeated, len(BODY)), probe.receive, probe.send)
    assert (probe.status, probe.json()["detail"]) == (401, "malformed_header:signature")


# --- the real process ----------------------------------------------------------------------------------

FLOOD_CONNECTIONS = 60
FLOOD_BODY = 15 * 1024 * 1024
CHUNK = b"z" * (256 * 1024)


async def _upload(port: int, declared: int, send_bytes: int, headers: Mapping[str, str] = {}) -> int | str:
    """POST `send_bytes` of a body declared as `declared` bytes, reading the answer while sending.
    Returns the status, or what went wrong if the server closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /api/process HTTP/1.1\r\nHost: npu-worker\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    )

    async def send_body() -> None:
        writer.write(head.encode())
        sent = 0
        while sent < send_bytes:
            piece = CHUNK[: min(len(CHUNK), send_bytes - sent)]
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    sender = asyncio.create_task(send_body())
    try:
        status_line = await reader.readline()
        return int(status_line.split(b" ")[1]) if status_line else "closed"
    except (ConnectionError, IndexError) as exc:
        return type(exc).__name__
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()


@pytest.fixture
def npu_deployment(
    tmp_path: Path, key_root: Path, redis_server: RedisServer
) -> Callable[[Phase], Deployment]:
    def make(phase: Phase) -> Deployment:
        return Deployment(
            tmp_path / phase, key_root, phase, redis_server.url, app_module="autobot.services.npu_worker"
        )

    return make


async def _signed_calls(served: ServedProcess, keyrings: dict[str, Keyring], count: int) -> list[float]:
    latencies = []
    async with ServiceClient(
        "main-backend", keyrings["main-backend"], {"npu-worker": served.base_url}, timeout=30.0, retries=0
    ) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = await client.post("npu-worker", "/api/process", json={"texts": ["hello"]})
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return latencies


@pytest.mark.parametrize("phase", ["enforcement", "logging"])
async def test_a_flood_of_unsigned_uploads_does_not_grow_the_served_process(
    phase: Phase, npu_deployment: Callable[[Phase], Deployment], keyrings: dict[str, Keyring]
) -> None:
    """60 strangers each upload 15 MiB at once to the real npu-worker process (`autobot serve`). Its peak
    resident memory may grow by a few MiB of connection buffers, not by the bodies (it grew by ~870 MiB when
    the middleware buffered every body before looking at the headers)."""
    with npu_deployment(phase).served() as served:
        await _signed_calls(served, keyrings, 3)  # warm: components built, Redis connected
        rss_before, _ = served.memory_kib()
        statuses = await asyncio.gather(
            *(_upload(served.port, FLOOD_BODY, FLOOD_BODY) for _ in range(FLOOD_CONNECTIONS)),
            # A stranger in the flood that sends only the head: nothing of it is left unread when the server
            # closes, so its answer always arrives (a sender's may be lost to the reset, all 60 under load).
            _upload(served.port, FLOOD_BODY, 0),
            _signed_calls(served, keyrings, 5),
        )
        rss_after, peak = served.memory_kib()
    refusals, probe = statuses[:-2], statuses[-2]
    latencies = statuses[-1]
    growth_mib = (peak - rss_before) / 1024
    print(
        f"\n{phase}: RSS {rss_before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB "
        f"(+{growth_mib:.1f} MiB), after {rss_after / 1024:.0f} MiB; "
        f"answers {sorted(set(map(str, refusals)))}, head-only {probe}; "
        f"signed calls meanwhile max {max(latencies) * 1000:.0f} ms"
    )
    expected = 401 if phase == "enforcement" else 413  # logging: the app's own limit, from Content-Length
    # Each stranger is refused; one still sending when the server closes may see the reset before the answer.
    cut = ("ConnectionResetError", "BrokenPipeError", "closed")
    assert all(s == expected or s in cut for s in refusals), refusals
    assert probe == expected, probe
    assert growth_mib < 40, growth_mib


async def test_an_unsigned_request_that_never_sends_its_body_is_answered_at_once(
    npu_deployment: Callable[[Phase], Deployment],
) -> None:
    """Declares 15 MiB, sends 1 KB, then waits: the 401 comes from the headers, not after a timeout. (Before,
    the middleware waited for the body that never came; no answer within 3 s.)"""
    with npu_deployment("enforcement").served() as served:
        started = time.perf_counter()
        status = await asyncio.wait_for(_upload(served.port, FLOOD_BODY, 1024), timeout=20)
        waited = time.perf_counter() - started
    print(f"\nanswered {status} after {waited * 1000:.0f} ms")
    assert status == 401
