"""The frontend's nginx site (roles/frontend/templates/nginx-site.conf.j2), rendered with the role's defaults
and served by a real nginx in front of a real main-backend: plain HTTP over sockets, no browser."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jinja2
import pytest
import yaml
from ui_stack import LOOPBACK, ROLE, LocalStack, prepare_nginx, render_site, require, role_defaults

from autobot.config import BackendConfig
from autobot.services.main_backend.app import JSON_BODY_LIMIT, MULTIPART_OVERHEAD

require(browser=False, nginx=True)

HTML_CSP = role_defaults()["frontend_html_csp"]
API_CSP = role_defaults()["frontend_api_csp"]
COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}


@pytest.fixture
def http(local: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local.nginx.base_url, timeout=10, trust_env=False) as client:
        yield client


def new_session(client: httpx.Client) -> str:
    """A session of this client's identity (its cookie stays in `client`)."""
    created = client.post("/api/chat/sessions", json={})
    if created.status_code in (404, 405):  # main-backend before issue 15: ids are still client-chosen
        return "nginx-" + secrets.token_hex(8)
    assert created.status_code == 201, created.text
    session_id: str = created.json()["session_id"]
    return session_id


def stream_request(client: httpx.Client, message: str, extra_headers: bytes = b"") -> bytes:
    """A raw POST /api/chat/stream for a new session of `client`, carrying its identity cookie."""
    body = json.dumps({"message": message, "session_id": new_session(client)}).encode()
    cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    return (
        b"POST /api/chat/stream HTTP/1.1\r\nHost: frontend\r\nContent-Type: application/json\r\n"
        + (f"Cookie: {cookie}\r\n".encode() if cookie else b"")
        + extra_headers
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def assert_security_headers(response: httpx.Response, csp: str) -> None:
    headers = response.headers
    for name, value in COMMON.items():
        # Exactly one of each: a header inherited twice, or dropped by a child block, is a config bug.
        assert headers.get_list(name) == [value], (response.url, name, headers.get_list(name))
    assert headers.get_list("content-security-policy") == [csp], response.url
    assert "frame-ancestors 'none'" in csp
    assert headers["server"] == "nginx"  # server_tokens off: no version


def raw_request(port: int, request: bytes, source: str = LOOPBACK) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=10, source_address=(source, 0))
    sock.sendall(request)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


# --- the config itself ----------------------------------------------------------------------------------


def test_nginx_t_accepts_the_rendered_site(local: LocalStack) -> None:
    checked = local.nginx.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr
    assert "test is successful" in checked.stderr


def test_nginx_t_refuses_a_broken_site(local: LocalStack, tmp_path: Path) -> None:
    # What the role's validate step relies on: a bad value fails `nginx -t` instead of reaching a reload.
    broken = prepare_nginx(tmp_path / "broken", ["127.0.0.1:9"], frontend_chat_rate="lots")
    checked = broken.test_config()
    assert checked.returncode != 0
    assert "invalid rate" in checked.stderr


def test_defaults_match_main_backend_limits() -> None:
    defaults = role_defaults()
    assert defaults["frontend_json_body_max_bytes"] == JSON_BODY_LIMIT
    assert defaults["frontend_max_upload_bytes"] == BackendConfig.model_fields["max_upload_bytes"].default
    assert defaults["frontend_multipart_overhead_bytes"] == MULTIPART_OVERHEAD
    assert defaults["frontend_stream_read_timeout_s"] > defaults["frontend_stream_heartbeat_s"]
    assert defaults["frontend_upstream_keepalive_timeout_s"] < 5  # uvicorn's keep-alive timeout
    assert defaults["frontend_listen_port"] == 5173


def test_argument_specs_document_every_default() -> None:
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
    options = specs["options"]
    defaults = role_defaults()
    assert set(options) == set(defaults)
    for name, value in defaults.items():
        if name == "frontend_backend_hosts":  # derived from the inventory: the spec describes the expression
            assert "main-backend" in options[name]["default"]
            continue
        assert options[name]["default"] == value, name
        assert options[name]["description"], name
    # The template needs the backends (the role derives them from the inventory; here nobody gave any).
    with pytest.raises(jinja2.UndefinedError, match="frontend_backend_hosts"):
        render_site({k: v for k, v in defaults.items() if k != "frontend_backend_hosts"})


def test_site_lists_every_backend_host_with_keepalive(tmp_path: Path) -> None:
    nginx = prepare_nginx(tmp_path / "multi", ["10.0.0.1:8001", "10.0.0.2:8001"])
    site = nginx.site.read_text()
    upstream = site.split("upstream autobot_backend {", 1)[1].split("}", 1)[0]
    assert "server 10.0.0.1:8001;" in upstream
    assert "server 10.0.0.2:8001;" in upstream
    assert "keepalive 16;" in upstream
    assert nginx.test_config().returncode == 0


# --- headers on every location ----------------------------------------------------------------------------


def test_index_headers(http: httpx.Client) -> None:
    for path in ("/", "/index.html"):
        response = http.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-cache"
        assert_security_headers(response, HTML_CSP)
        assert b'<script type="module" src="js/app.js">' in response.content


def test_static_asset_headers_and_gzip(http: httpx.Client) -> None:
    script = http.get("/js/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("application/javascript")
    assert script.headers["cache-control"] == "no-cache"
    assert "etag" in script.headers  # revalidated, not re-downloaded
    assert_security_headers(script, HTML_CSP)
    again = http.get("/js/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    css = http.get("/css/app.css", headers={"Accept-Encoding": "gzip"})
    assert css.headers["content-encoding"] == "gzip"
    assert_security_headers(css, HTML_CSP)
    missing = http.get("/no/such/file.js")
    assert missing.status_code == 404
    assert_security_headers(missing, HTML_CSP)


def test_healthz_is_answered_by_nginx(http: httpx.Client, local: LocalStack) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "frontend"}
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response, API_CSP)
    record = wait_for_access_record(local, "/healthz")
    assert record["upstream_addr"] == ""


def test_api_headers_and_json_access_log(http: httpx.Client, local: LocalStack) -> None:
    response = http.get("/api/models", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.json()["models"]
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response, API_CSP)
    record = wait_for_access_record(local, "/api/models")
    assert record["upstream_addr"] == local.backend.host_port
    assert record["status"] == 200
    assert record["method"] == "GET"
    assert len(record["request_id"]) == 32


def test_download_keeps_one_nosniff(http: httpx.Client) -> None:
    # main-backend sets nosniff on downloads itself; nginx replaces it rather than sending it twice.
    session = new_session(http)
    up = http.post(f"/api/sessions/{session}/files", files={"file": ("a.txt", b"hello", "text/plain")})
    assert up.status_code == 201, up.text
    got = http.get(f"/api/sessions/{session}/files/{up.json()['file_id']}")
    assert got.content == b"hello"
    assert_security_headers(got, API_CSP)


# --- streaming ----------------------------------------------------------------------------------------------


def test_stream_is_not_buffered(local: LocalStack, http: httpx.Client) -> None:
    request = stream_request(http, "stream through nginx", b"Accept-Encoding: gzip\r\n")
    sock = raw_request(local.nginx.port, request)
    reads: list[bytes] = []
    try:
        while not reads or b"event: done" not in b"".join(reads):
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the done event"
            reads.append(chunk)
    finally:
        sock.close()
    raw = b"".join(reads)
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-type: text/event-stream" in head
    assert b"content-encoding" not in head  # never gzipped
    first_chunk = next(i for i, r in enumerate(reads) if b"event: chunk" in r)
    done = next(i for i, r in enumerate(reads) if b"event: done" in r)
    # The first event reached the client while the stream was still running, in a read of its own.
    assert first_chunk < done
    assert sum(b"event: chunk" in r for r in reads) > 1


def test_stream_connections_per_client_are_limited(local: LocalStack, http: httpx.Client) -> None:
    limit = role_defaults()["frontend_stream_connections_per_client"]
    request = stream_request(http, "hold the stream open")
    # A client address of its own (any 127/8 address reaches loopback), so no other test shares its counters.
    source = "127.0.0.3"
    open_streams = [raw_request(local.nginx.port, request, source) for _ in range(limit)]
    try:
        for sock in open_streams:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        extra = raw_request(local.nginx.port, request, source)
        status, headers, payload = read_response(extra)
        extra.close()
    finally:
        for sock in open_streams:
            sock.close()
    assert status == 429
    assert json.loads(payload)["error"] == "too_many_requests"
    assert headers["retry-after"] == str(role_defaults()["frontend_rate_limit_retry_after_s"])


# --- limits answered by nginx ---------------------------------------------------------------------------


def test_chat_rate_limit_answers_429(local: LocalStack) -> None:
    burst = role_defaults()["frontend_chat_burst"]
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    statuses: list[int] = []
    with httpx.Client(base_url=local.nginx.base_url, transport=transport, timeout=10) as client:
        for _ in range(burst + 10):
            # An empty body: main-backend refuses it at once (422), so only nginx's limit is exercised.
            response = client.post("/api/chat", json={})
            statuses.append(response.status_code)
            if response.status_code == 429:
                last = response
    assert set(statuses) <= {422, 429}
    assert statuses[:burst] == [422] * burst  # the burst passes
    assert statuses.count(429) >= 5
    assert last.json()["error"] == "too_many_requests"
    assert last.json()["source"] == "frontend"
    assert last.headers["retry-after"] == str(role_defaults()["frontend_rate_limit_retry_after_s"])
    assert_security_headers(last, API_CSP)


def test_oversize_json_body_gets_413_from_nginx(local: LocalStack) -> None:
    limit = role_defaults()["frontend_json_body_max_bytes"]
    # Only the headers: nginx must refuse on Content-Length, before any byte of the body (or the backend).
    request = (
        b"POST /api/chat HTTP/1.1\r\nHost: frontend\r\nContent-Type: application/json\r\n"
        b"X-Test: oversize-json\r\nContent-Length: " + str(limit + 1).encode() + b"\r\n\r\n"
    )
    sock = raw_request(local.nginx.port, request)
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 413
    payload = json.loads(body)
    assert payload["error"] == "payload_too_large"
    assert payload["source"] == "frontend"  # nginx's JSON, not main-backend's (which has limit_bytes)
    assert "limit_bytes" not in payload
    assert headers["content-type"] == "application/json"
    assert headers["x-frame-options"] == "DENY"
    record = wait_for_access_record(local, "/api/chat", status=413)
    assert record["upstream_addr"] == ""  # main-backend never saw it


def test_upload_route_takes_larger_bodies_than_json_routes(http: httpx.Client, local: LocalStack) -> None:
    defaults = role_defaults()
    content = b"x" * (defaults["frontend_json_body_max_bytes"] + 1024)
    session = new_session(http)
    up = http.post(f"/api/sessions/{session}/files", files={"file": ("big.bin", content)})
    assert up.status_code == 201, up.text
    assert up.json()["file_size"] == len(content)
    too_big = defaults["frontend_max_upload_bytes"] + defaults["frontend_multipart_overhead_bytes"] + 1
    request = (
        f"POST /api/sessions/{session}/files HTTP/1.1\r\nHost: frontend\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: "
        + str(too_big).encode()
        + b"\r\n\r\n"
    )
    sock = raw_request(local.nginx.port, request)
    status, _, body = read_response(sock)
    sock.close()
    assert status == 413
    assert json.loads(body)["source"] == "frontend"


def test_backend_down_is_a_json_502_with_headers(local: LocalStack, http: httpx.Client) -> None:
    local.backend.stop()
    try:
        response = http.get("/api/models")
        assert response.status_code == 502
        assert response.json()["error"] == "backend_unavailable"
        assert_security_headers(response, API_CSP)
        assert http.get("/healthz").status_code == 200  # nginx itself is fine
    finally:
        local.backend.start()
    assert http.get("/api/models").status_code == 200


def wait_for_access_record(local: LocalStack, path: str, status: int | None = None) -> dict[str, object]:
    # nginx writes the access log line when the request ends; poll briefly for it.
    deadline = time.monotonic() + 5
    while True:
        for record in reversed(local.nginx.access_records()):
            if record["path"] == path and (status is None or record["status"] == status):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no access log record for {path}: {local.nginx.access_records()[-3:]}")
        time.sleep(0.05)
