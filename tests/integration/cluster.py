"""Helpers to run the Python services for tests, as they run when deployed.

- `serving(app)`: one ASGI app under a real uvicorn server on a loopback socket, inside the test's event loop.
- `redis_acl_rules(matrix, service)` / `create_acl_user(...)`: the service's Redis ACL user, from the matrix.
- `build_cluster(...)` -> `Cluster`: the four Python services as real `autobot serve` subprocesses, with key
  files from the real `autobot keys generate`, laid out per service as the deployment lays them out.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import redis
import yaml
from redis.asyncio import Redis
from tests.support.http_server import bound_socket, serving  # noqa: F401
from tests.support.redis_server import free_port

from autobot.security.distribution import machine_key_files
from autobot.security.entry import render_entry
from autobot.security.keyring_file import read_keyring
from autobot.security.keys import derive_pair_key

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
MATRIX_FILE = ROOT / "inventory" / "group_vars" / "all" / "services.yml"


# bound_socket and serving live in tests/support/http_server.py (re-exported here for callers).


# --- Redis ACL from the matrix --------------------------------------------------------------------------


def load_matrix(path: Path = MATRIX_FILE) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))["autobot_services"]
    return services


def redis_acl_rules(services: Mapping[str, Any], service: str) -> list[str]:
    """ACL SETUSER rules for `service`: its key patterns, its replay-store namespace and its commands, exactly
    as the matrix declares them (nothing added but ~nonce:<service>:*, which the matrix comment promises)."""
    redis = services[service]["redis"]
    keys = [f"~{pattern}" for pattern in redis["keys"]]
    keys.append(f"~nonce:{service}:*")
    return ["resetkeys", "resetchannels", "-@all", *keys, *redis["commands"]]


async def create_acl_user(admin: Redis, services: Mapping[str, Any], service: str) -> tuple[str, str]:
    """A fresh ACL user with `service`'s rules; returns (username, password)."""
    username = f"{service}-{secrets.token_hex(4)}"
    password = secrets.token_hex(32)
    await admin.execute_command(
        "ACL", "SETUSER", username, "reset", "on", f">{password}", *redis_acl_rules(services, service)
    )
    return username, password


# --- the four services as `autobot serve` processes ----------------------------------------------------

PYTHON_SERVICES = ("main-backend", "npu-worker", "ai-stack", "browser-service")
APP_MODULES = {
    "main-backend": "autobot.services.main_backend",
    "npu-worker": "autobot.services.npu_worker",
    "ai-stack": "autobot.services.ai_stack",
    "browser-service": "autobot.services.browser_service",
}
ENTRY_TEMPLATE = ROOT / "templates" / "asgi_entry.py.j2"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
Phase = Literal["logging", "enforcement"]


def autobot_command(*args: str) -> list[str]:
    """The installed `autobot` console script of this interpreter's environment (as operators run it)."""
    script = Path(sys.executable).with_name("autobot")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from autobot.cli import main; main()", *args]


def generate_keyring(path: Path, matrix_file: Path = MATRIX_FILE) -> dict[str, dict[int, bytes]]:
    """Run the real `autobot keys generate`; return service -> version -> master key (for the leak checks),
    read independently from the keyring file's documented format."""
    subprocess.run(
        autobot_command("keys", "generate", "--matrix", str(matrix_file), "--out", str(path)),
        check=True,
        capture_output=True,
        timeout=60,
    )
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert doc["format"] == "autobot-keyring-v2", doc.get("format")
    return {
        service: {int(version): bytes.fromhex(hex_key) for version, hex_key in entry["keys"].items()}
        for service, entry in doc["services"].items()
    }


def write_key_dir(directory: Path, files: Mapping[str, str]) -> None:
    """Write a machine's key files with the service_keys role's modes (dir 0750, files 0640)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o750)
    for name, hex_key in files.items():
        path = directory / name
        path.write_text(hex_key + "\n", encoding="ascii")
        path.chmod(0o640)


@dataclass
class ServiceProcess:
    service_id: str
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.home / "config.yml"

    @property
    def entry_path(self) -> Path:
        return self.home / "asgi.py"

    @property
    def keys_dir(self) -> Path:
        return self.home / "service-keys"

    @property
    def audit_log(self) -> Path:
        return self.home / "service-auth-audit.log"

    @property
    def output_log(self) -> Path:
        return self.home / "serve.log"

    def audit_records(self) -> list[dict[str, Any]]:
        return read_audit(self.audit_log)

    def output_tail(self, lines: int = 40) -> str:
        if not self.output_log.exists():
            return "(no output)"
        return "\n".join(self.output_log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def render_entry_file(svc: ServiceProcess, phase: Phase) -> None:
    text = render_entry(
        ENTRY_TEMPLATE,
        service_id=svc.service_id,
        app_module=APP_MODULES[svc.service_id],
        config_path=svc.config_path,
        service_auth_middleware=phase,
    )
    svc.entry_path.write_text(text, encoding="utf-8")


def service_config(
    svc: ServiceProcess,
    *,
    redis_url: str,
    redis_user: str,
    password_file: Path,
    peers: Mapping[str, str],
    matrix_file: Path,
) -> dict[str, Any]:
    """The config.yml the deployment renders for one service, pointing at this test's files and ports."""
    config: dict[str, Any] = {
        "service_id": svc.service_id,
        "listen": {"host": LOOPBACK, "port": svc.port},
        "asgi_entry": str(svc.entry_path),
        "redis": {
            "url": redis_url,
            "username": redis_user,
            "password_file": str(password_file),
            "client_name": svc.service_id,
        },
        "security": {
            "keys_dir": str(svc.keys_dir),
            "matrix_file": str(matrix_file),
            "audit_log": str(svc.audit_log),
        },
        "peers": dict(peers),
        "log_level": "warning",
    }
    if svc.service_id == "main-backend":
        data = svc.home / "data"
        config["llm"] = {"provider": "ai-stack", "timeout_s": 30}
        config["backend"] = {
            "database": str(data / "conversation_files.db"),
            "files_dir": str(data / "files"),
            "transcripts_dir": str(data / "transcripts"),
        }
        for sub in ("files", "transcripts"):
            (data / sub).mkdir(parents=True, exist_ok=True)
    elif svc.service_id == "ai-stack":
        # Paced as on the local cluster (a word every 50 ms): a streamed reply takes about 2 s, long enough to
        # watch it arrive in pieces, or to stop ai-stack in the middle of one.
        config["llm"] = {"provider": "offline", "offline_chunk_delay_s": 0.05}
    return config


def peers_of(service: str, services: Mapping[str, Any], urls: Mapping[str, str]) -> dict[str, str]:
    """The services `service` may call according to the matrix, with their URLs."""
    return {
        callee: urls[callee]
        for callee in PYTHON_SERVICES
        if callee in urls and service in (services[callee].get("callers") or {})
    }


@dataclass
class Cluster:
    root: Path
    services: dict[str, ServiceProcess]
    masters: dict[str, dict[int, bytes]]
    matrix: dict[str, Any]
    # service -> (Redis ACL user, its password)
    redis_users: dict[str, tuple[str, str]] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)

    def __getitem__(self, service: str) -> ServiceProcess:
        return self.services[service]

    def key_material(self) -> list[str]:
        """Every key this cluster holds, as it could leak into a log (hex and base64 of each)."""
        keys = [k for versions in self.masters.values() for k in versions.values()]
        keys += [
            derive_pair_key(k, callee)
            for versions in self.masters.values()
            for k in versions.values()
            for callee in PYTHON_SERVICES
        ]
        return [k.hex() for k in keys] + [base64.b64encode(k).decode() for k in keys]

    def secrets(self) -> list[str]:
        """Everything that must never appear in a log or a config file: keys and Redis passwords."""
        return self.key_material() + [password for _, password in self.redis_users.values()]

    def set_phase(self, service: str, phase: Phase) -> None:
        """What the deployment does for a phase change: render the entry file, nothing else."""
        render_entry_file(self.services[service], phase)
        self.phases[service] = phase

    def start(self, *names: str) -> None:
        """Start the services (all at once, then wait for each to answer /api/health)."""
        for name in names:
            svc = self.services[name]
            assert svc.process is None or svc.process.poll() is not None, f"{name} is already running"
            with svc.output_log.open("ab") as out:
                svc.process = subprocess.Popen(
                    autobot_command("serve", name, "--config", str(svc.config_path)),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=svc.home,
                )
        for name in names:
            wait_until_healthy(self.services[name])

    def stop(self, *names: str) -> None:
        """Terminate the services by PID: all at once, then wait for each."""
        chosen = [self.services[name] for name in names or tuple(self.services)]
        for svc in chosen:
            if svc.process is not None and svc.process.poll() is None:
                svc.process.terminate()
        for svc in chosen:
            stop_process(svc)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)


def wait_until_healthy(svc: ServiceProcess, timeout: float = START_TIMEOUT_S) -> None:
    assert svc.process is not None
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=svc.url, timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            code = svc.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{svc.service_id} exited with {code} while starting:\n{svc.output_tail()}"
                )
            try:
                if client.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    stop_process(svc)
    raise RuntimeError(f"{svc.service_id} did not answer /api/health within {timeout}s:\n{svc.output_tail()}")


def stop_process(svc: ServiceProcess) -> None:
    """Terminate the service by its PID (SIGTERM, then SIGKILL after a grace period)."""
    process, svc.process = svc.process, None
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def build_cluster(
    root: Path,
    redis_url: str,
    admin: redis.Redis,
    *,
    phase: Phase,
    names: tuple[str, ...] = PYTHON_SERVICES,
    matrix_file: Path = MATRIX_FILE,
) -> Cluster:
    """Lay out everything the deployment would for `names` (keys, Redis ACL users, config, entry file) without
    starting anything. Redis users get a per-cluster suffix so clusters sharing one server never collide."""
    services = load_matrix(matrix_file)
    masters = generate_keyring(root / "keyring.yml", matrix_file)
    # The same function the Ansible filter uses to decide which files each machine receives.
    keyring = read_keyring(root / "keyring.yml")
    suffix = secrets.token_hex(3)
    procs = {name: ServiceProcess(name, root / name, port=free_port()) for name in names}
    urls = {name: svc.url for name, svc in procs.items()}
    cluster = Cluster(root=root, services=procs, masters=masters, matrix=services)
    for name, svc in procs.items():
        svc.home.mkdir(parents=True, exist_ok=True)
        write_key_dir(svc.keys_dir, machine_key_files(keyring, services, name))
        user, password = f"{name}-{suffix}", secrets.token_hex(32)
        admin.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">{password}", *redis_acl_rules(services, name)
        )
        cluster.redis_users[name] = (user, password)
        password_file = svc.home / "redis.password"
        password_file.write_text(password + "\n", encoding="ascii")
        password_file.chmod(0o600)
        config = service_config(
            svc,
            redis_url=redis_url,
            redis_user=user,
            password_file=password_file,
            peers=peers_of(name, services, urls),
            matrix_file=matrix_file,
        )
        svc.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        cluster.set_phase(name, phase)
    return cluster


@contextlib.contextmanager
def running_cluster(
    root: Path,
    redis_url: str,
    *,
    phase: Phase,
    names: tuple[str, ...] = PYTHON_SERVICES,
    start: tuple[str, ...] | None = None,
) -> Iterator[Cluster]:
    """Build a cluster, start `start` (default: all of `names`); on exit stop every process by PID and drop
    the Redis ACL users it created."""
    with redis.Redis.from_url(redis_url) as admin:
        cluster = build_cluster(root, redis_url, admin, phase=phase, names=names)
        try:
            cluster.start(*(names if start is None else start))
            yield cluster
        finally:
            cluster.stop()
            for user, _ in cluster.redis_users.values():
                admin.execute_command("ACL", "DELUSER", user)


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for_audit(audit_log: Path, /, **fields: Any) -> dict[str, Any]:
    """The first audit record with all `fields`; the log is written by a background thread, so poll."""
    deadline = time.monotonic() + 5.0
    while True:
        for record in read_audit(audit_log):
            if all(record.get(k) == v for k, v in fields.items()):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no audit record with {fields} in {audit_log}: {read_audit(audit_log)[-5:]}"
            )
        time.sleep(0.02)
