"""A service deployed as the deployment lays it out (config file + rendered entry file), in-process or as a
real `autobot serve` process.

`Deployment` writes npu-worker's config.yml and its ASGI entry file for one phase; `app()` loads the entry
file in this process (served by tests/support/http_server.py), `served()` starts the real command in its own
process, so a test can measure that process (RSS, CPU) from the outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from tests.security.auth_support import MATRIX_FILE, ROOT, TEMPLATE
from tests.support.redis_server import free_port

from autobot.cli.serve import load_entry_app
from autobot.security.entry import render_entry

Phase = Literal["logging", "enforcement"]
SERVICE = "npu-worker"


class Deployment:
    def __init__(
        self,
        root: Path,
        key_root: Path,
        phase: Phase,
        redis_url: str,
        keys_dir: Path | None = None,
        *,
        app_module: str = "tests.security.auth_apps",
        redis: Mapping[str, Any] | None = None,
        security: Mapping[str, Any] | None = None,
        matrix_file: Path = MATRIX_FILE,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.audit = root / "service-auth-audit.log"
        self.entry = root / "asgi.py"
        self.config = root / "config.yml"
        self.port = free_port()
        self.config.write_text(
            yaml.safe_dump(
                {
                    "service_id": SERVICE,
                    "listen": {"host": "127.0.0.1", "port": self.port, "graceful_shutdown_s": 2},
                    "asgi_entry": str(self.entry),
                    "redis": {"url": redis_url, "retries": 0, "connect_timeout_s": 0.5, **(redis or {})},
                    "security": {
                        "keys_dir": str(keys_dir or key_root / SERVICE),
                        "matrix_file": str(matrix_file),
                        "audit_log": str(self.audit),
                        **(security or {}),
                    },
                    "log_level": "warning",
                }
            )
        )
        self.entry.write_text(
            render_entry(
                TEMPLATE,
                service_id=SERVICE,
                app_module=app_module,
                config_path=self.config,
                service_auth_middleware=phase,
            )
        )

    def app(self) -> Any:
        return load_entry_app(self.entry, SERVICE)

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    @contextlib.contextmanager
    def served(self) -> Iterator[ServedProcess]:
        """Run `autobot serve npu-worker --config ...`, the deployed start command, until the block ends."""
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("autobot")), "serve", SERVICE, "--config", str(self.config)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_listening(self.port, proc)
            yield ServedProcess(proc.pid, f"http://127.0.0.1:{self.port}", self.port)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


@dataclass(frozen=True)
class ServedProcess:
    pid: int
    base_url: str
    port: int

    def memory_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the process in KiB: its resident memory now and its peak so far."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"autobot serve exited with {proc.returncode}: {stderr}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"autobot serve did not listen on port {port} within {timeout}s")
