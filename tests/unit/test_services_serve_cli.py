"""`autobot serve`: config checks (exit code 2), loading the deployed entry file, a real server process."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from tests.integration.cluster import ServiceProcess, autobot_command, stop_process, wait_until_healthy
from tests.support.redis_server import free_port

from autobot.cli import main
from autobot.cli.serve import EntryError, load_entry_app

# A minimal ASGI app standing in for a rendered entry file: it echoes what the server tells it about the
# client, so the test can see whether forwarded headers were trusted.
ECHO_ENTRY = """
import json

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def _write_config(
    tmp_path: Path,
    *,
    service: str = "npu-worker",
    entry: Path | None = None,
    port: int = 8081,
    log_level: str = "warning",
) -> Path:
    lines = [
        f"service_id: {service}",
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"log_level: {log_level}",
    ]
    if entry is not None:
        lines.append(f"asgi_entry: {json.dumps(str(entry))}")
    path = tmp_path / "config.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _serve(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["serve", *args])
    return result.exit_code, result.output


@contextlib.contextmanager
def _serving_echo(tmp_path: Path, *, log_level: str = "warning") -> Iterator[ServiceProcess]:
    """A real `autobot serve npu-worker` process serving ECHO_ENTRY on a free port, stopped at the end."""
    entry = tmp_path / "asgi.py"
    entry.write_text(ECHO_ENTRY)
    port = free_port()
    config = _write_config(tmp_path, entry=entry, port=port, log_level=log_level)
    svc = ServiceProcess("npu-worker", tmp_path, port=port)
    with svc.output_log.open("wb") as out:
        svc.process = subprocess.Popen(
            autobot_command("serve", "npu-worker", "--config", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(svc)
        yield svc
    finally:
        stop_process(svc)


def test_missing_config_file(tmp_path: Path) -> None:
    code, output = _serve("npu-worker", "--config", str(tmp_path / "nope.yml"))
    assert code == 2
    assert "cannot read config file" in output


def test_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("service_id: npu-worker\nlisten: {port: 70000}\n")
    code, output = _serve("npu-worker", "--config", str(path))
    assert code == 2
    assert "is invalid" in output


def test_config_of_another_service(tmp_path: Path) -> None:
    config = _write_config(tmp_path, service="ai-stack", entry=tmp_path / "asgi.py")
    code, output = _serve("npu-worker", "--config", str(config))
    assert code == 2
    assert "is for service 'ai-stack', not 'npu-worker'" in output


def test_unknown_service_name(tmp_path: Path) -> None:
    code, output = _serve("frontend", "--config", str(_write_config(tmp_path)))
    assert code == 2
    assert "frontend" in output


def test_config_without_entry_file(tmp_path: Path) -> None:
    code, output = _serve("npu-worker", "--config", str(_write_config(tmp_path)))
    assert code == 2
    assert "names no asgi_entry" in output


def test_entry_file_missing(tmp_path: Path) -> None:
    code, output = _serve("npu-worker", "--config", str(_write_config(tmp_path, entry=tmp_path / "asgi.py")))
    assert code == 2
    assert "does not exist (was the service-auth phase deployed?)" in output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('keys missing')", "failed to import: RuntimeError: keys missing"),
        ("import no_such_module_here", "failed to import: ModuleNotFoundError"),
        ("application = None", "defines no callable `app`"),
        ("app = 42", "defines no callable `app`"),
    ],
)
def test_bad_entry_files(tmp_path: Path, source: str, message: str) -> None:
    entry = tmp_path / "asgi.py"
    entry.write_text(source + "\n")
    with pytest.raises(EntryError, match=r"asgi\.py"):
        load_entry_app(entry, "npu-worker")
    code, output = _serve("npu-worker", "--config", str(_write_config(tmp_path, entry=entry)))
    assert code == 2
    assert message in output


def test_entry_app_is_loaded_from_its_path(tmp_path: Path) -> None:
    entry = tmp_path / "asgi.py"
    entry.write_text(ECHO_ENTRY)
    app = load_entry_app(entry, "npu-worker")
    assert callable(app)
    assert app.__module__ == "autobot_entry_npu_worker"


def test_serves_the_entry_app_without_trusting_forwarded_headers(tmp_path: Path) -> None:
    with _serving_echo(tmp_path, log_level="info") as svc:
        response = httpx.get(
            f"{svc.url}/anything",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"},
            trust_env=False,
        )
    assert response.json() == {"client": "127.0.0.1", "scheme": "http"}
    # Info logging is on (config log_level), but no access log by default.
    output = svc.output_log.read_text()
    assert "Application startup complete" in output
    assert "/anything" not in output


def test_systemd_listen_fd_follows_sd_listen_fds() -> None:
    from autobot.cli.serve import systemd_listen_fd

    env = {"LISTEN_FDS": "1", "LISTEN_PID": "4242", "LISTEN_FDNAMES": "x", "PATH": "/bin"}
    assert systemd_listen_fd(env, 4242) == 3
    assert env == {"PATH": "/bin"}, "the variables are for this process only"
    # Meant for another process (a parent that exec'd us without updating LISTEN_PID): ignored, still removed.
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert systemd_listen_fd(env, 4242) is None
    assert env == {}
    assert systemd_listen_fd({}, 4242) is None
    assert systemd_listen_fd({"LISTEN_FDS": "0", "LISTEN_PID": "7"}, 7) is None


def test_more_than_one_passed_socket_is_refused() -> None:
    from autobot.cli.serve import systemd_listen_fd
    from autobot.config import ConfigError

    with pytest.raises(ConfigError, match="2 sockets"):
        systemd_listen_fd({"LISTEN_FDS": "2", "LISTEN_PID": "7"}, 7)


def test_serves_on_the_socket_systemd_passes(tmp_path: Path) -> None:
    """As under a .socket unit: the parent holds the listening socket; the service takes it as fd 3 and never
    binds the port its config names. The socket outlives the process, so a restart queues, never refuses."""
    import os
    import socket

    entry = tmp_path / "asgi.py"
    entry.write_text(ECHO_ENTRY)
    config_port = free_port()  # what the config names: must stay closed
    config = _write_config(tmp_path, entry=entry, port=config_port)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    svc = ServiceProcess("npu-worker", tmp_path, port=port)

    def start() -> None:
        def take_fd_3() -> None:
            os.dup2(listener.fileno(), 3)

        with svc.output_log.open("ab") as out:
            svc.process = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    'LISTEN_PID=$$ exec "$0" "$@"',
                    *autobot_command("serve", "npu-worker", "--config", str(config)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LISTEN_FDS": "1"},
                preexec_fn=take_fd_3,
                pass_fds=(3,),
            )

    try:
        start()
        wait_until_healthy(svc)
        stop_process(svc)
        # Between two processes the port still accepts: the connection waits in the backlog.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)
        waiting.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        start()
        waiting.settimeout(30)
        answer = waiting.recv(4096)
        waiting.close()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{config_port}/", trust_env=False, timeout=1)
    finally:
        stop_process(svc)
        listener.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_an_oversized_request_head_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    """uvicorn's httptools keeps an unfinished header in memory however long it grows: the served protocol
    refuses a head past listen.max_request_head_bytes with 431 and closes, while normal heads pass."""
    import socket

    with _serving_echo(tmp_path) as svc:
        # A head of 20 KiB (under the 32 KiB default) is served, twice on one keep-alive connection.
        big_but_fine = b"x-padding: " + b"a" * 20_000 + b"\r\n"
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as conn:
            for _ in range(2):
                conn.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n" + big_but_fine + b"\r\n")
                response = b""
                while not response.endswith(b"0\r\n\r\n"):  # the last chunk of the echo's answer
                    response += conn.recv(65536)
                assert response.startswith(b"HTTP/1.1 200"), response[:200]
        # A header that never ends: refused once the bound is passed, long before the 4 MiB are sent.
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as conn:
            conn.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\nx-flood: ")
            sent, answer = 0, b""
            while sent < 4 * 1024 * 1024:
                try:
                    conn.sendall(b"a" * 16384)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 16384
                conn.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    answer += conn.recv(65536)
                conn.settimeout(10)
                if answer:
                    break
            if not answer:
                answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert sent < 256 * 1024, f"the server read {sent} bytes of headers before refusing"


def test_an_idle_connection_stays_open_longer_than_callers_reuse_it(tmp_path: Path) -> None:
    """Callers stop reusing a pooled connection after KEEPALIVE_EXPIRY_S; the served process must not close it
    before then, or a caller's POST (never retried) can land on a connection being closed and fail."""
    import socket
    import time

    from autobot.client.service_client import CALLEE_KEEPALIVE_S, KEEPALIVE_EXPIRY_S

    assert KEEPALIVE_EXPIRY_S < CALLEE_KEEPALIVE_S
    request = b"POST /turn HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    with (
        _serving_echo(tmp_path) as svc,
        socket.create_connection(("127.0.0.1", svc.port), timeout=10) as conn,
    ):
        for _ in range(2):
            conn.sendall(request)
            response = b""
            while not response.endswith(b"0\r\n\r\n"):
                chunk = conn.recv(65536)
                assert chunk, "the server closed a connection the caller may still reuse"
                response += chunk
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            time.sleep(KEEPALIVE_EXPIRY_S + 0.5)


def test_a_stop_serves_the_first_request_of_a_new_connection_and_closes_idle_ones(tmp_path: Path) -> None:
    """A restart must not break a request whose connection was accepted just before it: that connection gets
    its first request served (with Connection: close). A kept-alive connection between requests is closed
    at once, as uvicorn does (its client resends on a new connection)."""
    import signal
    import socket
    import time

    request = b"POST /turn HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    with _serving_echo(tmp_path) as svc:
        assert svc.process is not None
        kept = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        kept.sendall(request)
        first = b""
        while not first.endswith(b"0\r\n\r\n"):  # the whole answer: the last chunk of the echo's body
            first += kept.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        fresh = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        time.sleep(0.3)  # accepted by the server's event loop, no byte sent yet
        svc.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the stop has begun
        assert kept.recv(65536) == b""  # closed between requests
        fresh.sendall(request)
        answer = b""
        while chunk := fresh.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"connection: close" in answer.lower()
        assert svc.process.wait(timeout=10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        kept.close()
        fresh.close()
