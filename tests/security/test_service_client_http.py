"""ServiceClient against a real local server (uvicorn + the enforcement middleware + real Redis): `request`
and the streamed call `stream`."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from tests.integration.cluster import read_audit
from tests.security.auth_support import MATRIX_FILE, serving
from tests.support.redis_server import free_port

from autobot.client.service_client import (
    ServiceCallError,
    ServiceClient,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from autobot.config import ListenConfig, SecurityConfig, ServiceConfig
from autobot.middleware.service_auth_enforcement import ServiceAuthEnforcementMiddleware
from autobot.security.audit import AuditLog
from autobot.security.keyring import Keyring
from autobot.security.matrix import Matrix


class Recorder:
    """The callee app: fails on demand and records what reached it past the enforcement middleware."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.nonces: list[str] = []
        self.fail_first = 2
        self.fail_status = 503
        self.gate = asyncio.Event()

    async def flaky(self, request: Request) -> Response:
        self.hits[request.method] += 1
        signature_input = request.headers["signature-input"]
        self.nonces.append(signature_input.split('nonce="')[1].split('"')[0])
        if self.hits[request.method] <= self.fail_first:
            return JSONResponse({"busy": True}, status_code=self.fail_status)
        return JSONResponse(
            {"query": dict(request.query_params), "raw_query": request.scope["query_string"].decode()}
        )

    async def slow(self, request: Request) -> Response:
        self.hits["slow"] += 1
        await asyncio.sleep(0.6)
        return JSONResponse({})

    async def lines(self, request: Request) -> Response:
        """Streams the JSON body it received back, one line per item, pausing at `gate` after the first."""
        self.hits["lines"] += 1
        self.nonces.append(request.headers["signature-input"].split('nonce="')[1].split('"')[0])
        items = (await request.json())["items"]

        async def body() -> AsyncIterator[bytes]:
            for index, item in enumerate(items):
                yield json.dumps({"item": item}).encode() + b"\n"
                if index == 0:
                    await self.gate.wait()

        return StreamingResponse(body(), media_type="application/x-ndjson")

    async def dies(self, request: Request) -> Response:
        """Answers a first line, then its connection breaks off, as when the callee's process dies."""
        self.hits["dies"] += 1

        async def body() -> AsyncIterator[bytes]:
            yield b'{"item": "before dying"}\n'
            await asyncio.sleep(0)
            raise RuntimeError("the callee dies mid-stream (deliberately, in a test)")

        return StreamingResponse(body(), media_type="application/x-ndjson")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/sessions/slow", self.slow, methods=["GET"]),
                Route("/api/sessions/stream/lines", self.lines, methods=["POST"]),
                Route("/api/sessions/stream/dies", self.dies, methods=["GET", "POST"]),
                Route("/api/sessions/{rest:path}", self.flaky, methods=["GET", "POST", "DELETE"]),
            ]
        )


@pytest.fixture
async def callee(
    redis_client: Redis, keyrings: dict[str, Keyring], tmp_path: Path
) -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder()
    audit = AuditLog.open(tmp_path / "callee-audit.log")
    app = ServiceAuthEnforcementMiddleware(
        recorder.app(),
        service_id="browser-service",
        keyring=keyrings["browser-service"],
        matrix=Matrix.load(MATRIX_FILE, "browser-service"),
        redis=redis_client,
        audit=audit,
    )
    try:
        async with serving(app) as base_url:
            yield recorder, base_url
    finally:
        audit.close()


def _client(keyrings: dict[str, Keyring], base_url: str, **kw: object) -> ServiceClient:
    options: dict[str, object] = {
        "retries": 3,
        "backoff_initial_s": 0.02,
        "backoff_jitter_s": 0.01,
        "timeout": 5.0,
    }
    options.update(kw)
    return ServiceClient(
        "main-backend",
        keyrings["main-backend"],
        {"browser-service": base_url},
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_get_is_retried_and_resigned_on_each_attempt(
    status: int, callee: tuple[Recorder, str], keyrings: dict[str, Keyring]
) -> None:
    recorder, base_url = callee
    recorder.fail_status = status
    async with _client(keyrings, base_url) as client:
        started = time.monotonic()
        response = await client.get("browser-service", "/api/sessions/s1", params={"q": "a b"})
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert recorder.hits["GET"] == 3  # two failures, then success, all past the enforcement middleware
    assert len(set(recorder.nonces)) == 3  # a fresh nonce (and signature) per attempt, else replay -> 401
    assert elapsed >= 0.02 + 0.04  # exponential backoff between attempts


async def test_post_is_not_retried(callee: tuple[Recorder, str], keyrings: dict[str, Keyring]) -> None:
    recorder, base_url = callee
    async with _client(keyrings, base_url) as client:
        response = await client.post("browser-service", "/api/sessions/s1", json={"x": 1})
    assert response.status_code == 503
    assert recorder.hits["POST"] == 1


async def test_retries_exhausted_return_the_last_response(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring]
) -> None:
    recorder, base_url = callee
    recorder.fail_first = 100
    async with _client(keyrings, base_url, retries=2) as client:
        response = await client.delete("browser-service", "/api/sessions/s1")
    assert response.status_code == 503
    assert recorder.hits["DELETE"] == 3


async def test_query_is_encoded_once_and_signed_as_sent(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring]
) -> None:
    recorder, base_url = callee
    recorder.fail_first = 0
    params = {"text": "a b+c/d?e&f=g", "unicode": "é€", "list": ["1", "2"], "tilde": "~x"}
    async with _client(keyrings, base_url) as client:
        response = await client.get("browser-service", "/api/sessions/s1", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["raw_query"] == (
        "text=a%20b%2Bc%2Fd%3Fe%26f%3Dg&unicode=%C3%A9%E2%82%AC&list=1&list=2&tilde=~x"
    )
    assert body["query"] == {"text": "a b+c/d?e&f=g", "unicode": "é€", "list": "2", "tilde": "~x"}


async def test_read_timeout_is_a_clear_error_and_not_retried(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring]
) -> None:
    recorder, base_url = callee
    async with _client(keyrings, base_url, timeout=0.2) as client:
        with pytest.raises(
            ServiceTimeoutError, match=r"GET browser-service/api/sessions/slow: timed out .* 0.2s"
        ):
            await client.get("browser-service", "/api/sessions/slow")
    assert recorder.hits["slow"] == 1


async def test_connection_refused_is_retried_for_get_only(keyrings: dict[str, Keyring]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with _client(keyrings, dead, retries=2) as client:
        with pytest.raises(ServiceUnavailableError, match=r"ConnectError after 3 attempt\(s\)"):
            await client.get("browser-service", "/api/sessions/s1")
        with pytest.raises(ServiceUnavailableError, match=r"after 1 attempt\(s\)"):
            await client.post("browser-service", "/api/sessions/s1")


async def test_bad_calls_fail_before_sending(keyrings: dict[str, Keyring]) -> None:
    async with _client(keyrings, "http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="unsafe path"):
            await client.get("browser-service", "/api/sessions/../admin")
        with pytest.raises(ValueError, match="params="):
            await client.get("browser-service", "/api/sessions/x?y=1")
        with pytest.raises(ValueError, match="signing headers"):
            await client.get("browser-service", "/api/sessions/x", headers={"Signature": "x"})
        with pytest.raises(Exception, match="no peer URL"):
            await client.get("npu-worker", "/api/health")


def test_from_config_reads_keys_and_peers(key_root: Path) -> None:
    config = ServiceConfig(
        service_id="main-backend",
        listen=ListenConfig(port=8001),
        security=SecurityConfig(
            keys_dir=key_root / "main-backend", matrix_file=MATRIX_FILE, audit_log=Path("/dev/null")
        ),
        peers={"npu-worker": "http://npu-worker:8081/"},
    )
    client = ServiceClient.from_config(config, timeout=3.0)
    assert client.service_id == "main-backend"
    assert client._peers == {"npu-worker": "http://npu-worker:8081"}


def test_from_config_without_keys_is_a_clear_service_error(tmp_path: Path) -> None:
    config = ServiceConfig(
        service_id="main-backend",
        listen=ListenConfig(port=8001),
        security=SecurityConfig(
            keys_dir=tmp_path / "none", matrix_file=MATRIX_FILE, audit_log=Path("/dev/null")
        ),
    )
    with pytest.raises(ServiceCallError, match=r"cannot load signing keys: key directory .* does not exist"):
        ServiceClient.from_config(config)


def test_a_keyring_that_cannot_sign_is_refused_up_front(key_root: Path, tmp_path: Path) -> None:
    """Verifier-only keys (no master key): a clear error at start-up, not a KeyringError on every call."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o750)
    pair = next((key_root / "npu-worker").glob("pair.*.key"))
    (keys_dir / pair.name).write_bytes(pair.read_bytes())
    (keys_dir / pair.name).chmod(0o640)
    config = ServiceConfig(
        service_id="npu-worker",
        listen=ListenConfig(port=8081),
        security=SecurityConfig(keys_dir=keys_dir, matrix_file=MATRIX_FILE, audit_log=Path("/dev/null")),
        peers={"ai-stack": "http://127.0.0.1:9"},
    )
    with pytest.raises(ServiceCallError, match="cannot sign requests"):
        ServiceClient.from_config(config)
    with pytest.raises(ValueError, match="cannot sign requests"):
        ServiceClient("npu-worker", Keyring.load_dir(keys_dir, "npu-worker"), {})


# --- stream -----------------------------------------------------------------------------------------------


async def _read_lines(response_lines: AsyncIterator[str], after_first: Callable[[], None]) -> list[str]:
    # A bound on a hang, not a timed assertion: a buffered stream would never deliver the first line.
    async with asyncio.timeout(10):
        first = await anext(response_lines)
    after_first()
    return [first] + [line async for line in response_lines]


async def test_stream_is_signed_verified_and_read_as_it_arrives(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring], tmp_path: Path
) -> None:
    recorder, base_url = callee
    async with _client(keyrings, base_url) as client:
        for _ in range(2):  # the second call needs a fresh nonce, or the replay store refuses it
            recorder.gate.clear()
            async with client.stream(
                "browser-service", "POST", "/api/sessions/stream/lines", json={"items": ["é€", 2, "z"]}
            ) as response:
                assert response.status_code == 200
                # The callee sends the rest only once the first line has reached this client.
                lines = await _read_lines(response.aiter_lines(), recorder.gate.set)
            assert [json.loads(line)["item"] for line in lines] == ["é€", 2, "z"]
    assert recorder.hits["lines"] == 2
    assert len(set(recorder.nonces)) == 2
    audit = [
        r for r in read_audit(tmp_path / "callee-audit.log") if r["path"] == "/api/sessions/stream/lines"
    ]
    assert [(r["caller"], r["decision"], r["status"]) for r in audit] == [("main-backend", "allow", 200)] * 2


async def _read_all(client: ServiceClient, method: str, path: str, into: list[str]) -> None:
    async with client.stream("browser-service", method, path) as response:
        async for line in response.aiter_lines():
            into.append(line)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_callee_dying_mid_stream_is_an_error_and_never_retried(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring], method: str
) -> None:
    recorder, base_url = callee
    received: list[str] = []
    async with _client(keyrings, base_url, retries=3) as client:
        with pytest.raises(ServiceUnavailableError, match=r"reading the streamed response.*1 attempt\(s\)"):
            await _read_all(client, method, "/api/sessions/stream/dies", received)
    assert [json.loads(line) for line in received] == [{"item": "before dying"}]
    assert recorder.hits["dies"] == 1  # retries=3 and even for GET: the callee had started answering


async def test_stream_hands_any_status_back_without_retrying(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring]
) -> None:
    recorder, base_url = callee
    async with (
        _client(keyrings, base_url) as client,
        client.stream("browser-service", "GET", "/api/sessions/s1") as response,
    ):
        assert response.status_code == 503
        assert json.loads(await response.aread()) == {"busy": True}
    assert recorder.hits["GET"] == 1  # `request` would have retried this GET


async def test_stream_retries_only_connections_that_were_never_made(
    callee: tuple[Recorder, str], keyrings: dict[str, Keyring]
) -> None:
    recorder, base_url = callee
    dead = f"http://127.0.0.1:{free_port()}"
    async with _client(keyrings, dead, retries=2) as client:
        with pytest.raises(ServiceUnavailableError, match=r"ConnectError after 3 attempt\(s\)"):
            async with client.stream("browser-service", "POST", "/api/sessions/s1", json={}):
                pass
    async with _client(keyrings, base_url, timeout=0.2) as client:
        with pytest.raises(ServiceTimeoutError, match=r"timed out waiting for the response .*1 attempt\(s\)"):
            async with client.stream("browser-service", "GET", "/api/sessions/slow"):
                pass
    assert recorder.hits["slow"] == 1  # the request was sent: waiting for its answer is never retried


async def test_stream_refuses_bad_calls_before_sending(keyrings: dict[str, Keyring]) -> None:
    async with _client(keyrings, "http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="unsafe path"):
            async with client.stream("browser-service", "GET", "/api/sessions/../admin"):
                pass
        with pytest.raises(ValueError, match="signing headers"):
            async with client.stream("browser-service", "GET", "/api/sessions/x", headers={"Signature": "x"}):
                pass
