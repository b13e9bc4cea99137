"""The local stack the UI tests run against, built from the real parts (this module holds no tests).

- main-backend as the deployment runs it: `autobot serve` with a rendered config and the logging-phase entry
  file, its own Redis ACL user on a real redis-server (tests/integration/cluster.py lays it out). Its LLM is
  the offline dev provider, paced, so a browser sees the reply grow.
- nginx started from the frontend role's own template (roles/frontend/templates/nginx-site.conf.j2) with the
  role's defaults, wrapped in an http{} block like Debian's nginx.conf, on a free loopback port, serving a
  copy of src/webui with a release.json as the deployment writes one.

The browser tests only see `UiTarget(base_url, backend)`: the same tests run against a deployed cluster when
the target comes from there instead (see conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jinja2
import pytest
import yaml
from tests.integration.cluster import Cluster, running_cluster
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "frontend"
SITE_TEMPLATE = ROLE / "templates" / "nginx-site.conf.j2"
ROLE_DEFAULTS = ROLE / "defaults" / "main.yml"
WEBUI = ROOT / "src" / "webui"
CHROMIUM = Path("/usr/bin/chromium")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 20.0


class BackendControl(Protocol):
    """Stops and starts main-backend behind the UI (local stack: its process; a cluster: its unit)."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


@dataclass(frozen=True)
class UiTarget:
    base_url: str
    # None when the target offers no way to stop main-backend (the outage test then skips).
    backend: BackendControl | None


# --- the nginx site, rendered from the role ------------------------------------------------------------


def role_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = yaml.safe_load(ROLE_DEFAULTS.read_text(encoding="utf-8"))
    return defaults


def render_site(variables: Mapping[str, Any]) -> str:
    """The site file as Ansible's template module renders it (trim_blocks on; undefined variables fail)."""
    env = jinja2.Environment(
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nginx config, not HTML
    )
    return env.from_string(SITE_TEMPLATE.read_text(encoding="utf-8")).render(**variables)


def main_conf(prefix: Path, site: Path) -> str:
    """Stands in for Debian's /etc/nginx/nginx.conf: the http-level settings the site relies on (mime types,
    sendfile, gzip on), every path inside `prefix`, and the site included inside http{}."""
    # As root, nginx's workers would switch to `nobody`, who cannot read pytest's 0700 temporary directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = prefix / "temp"
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    gzip on;
    access_log off;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
"""


@dataclass
class Nginx:
    prefix: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def site(self) -> Path:
        return self.prefix / "conf.d" / "autobot.conf"

    @property
    def web_root(self) -> Path:
        return self.prefix / "www"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "autobot-access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "autobot-error.log"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self, *extra: str) -> list[str]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        # -e: nginx opens its error log before reading the config; keep even that one in the prefix.
        return [
            binary,
            "-p",
            str(self.prefix),
            "-e",
            str(self.prefix / "logs" / "error.log"),
            "-c",
            str(self.conf),
            *extra,
        ]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> None:
        log = (self.prefix / "logs" / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.logs()}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port} within {START_TIMEOUT_S}s: {self.logs()}")

    def stop(self) -> None:
        """Stop the master by its PID (SIGQUIT: graceful; its workers exit with it), SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def logs(self) -> str:
        paths = (self.prefix / "logs" / "error.log", self.error_log, self.prefix / "logs" / "stdout.log")
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in paths if p.exists())

    def access_records(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


# The release's manifest as roles/release writes it; nginx serves it as /release.json.
RELEASE = {
    "id": "20250101T000000Z-0123456",
    "commit": "0123456",
    "name": "frontend",
    "source": "tests/ui local stack",
}


def site_variables(nginx: Nginx, backend_hosts: list[str], **overrides: Any) -> dict[str, Any]:
    """The role's defaults, plus what the deployment sets per machine, pointed at the test's files."""
    return {
        **role_defaults(),
        "frontend_listen_address": LOOPBACK,
        "frontend_listen_port": nginx.port,
        "frontend_backend_hosts": backend_hosts,
        "frontend_identity_header": "X-Autobot-User",
        "frontend_web_root": str(nginx.web_root),
        "frontend_release_manifest": str(nginx.web_root.parent / "manifest.json"),
        "frontend_access_log": str(nginx.access_log),
        "frontend_error_log": str(nginx.error_log),
        **overrides,
    }


def prepare_nginx(prefix: Path, backend_hosts: list[str], **overrides: Any) -> Nginx:
    nginx = Nginx(prefix=prefix, port=free_port())
    for sub in ("logs", "conf.d", "temp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    shutil.copytree(WEBUI, nginx.web_root)
    (nginx.web_root.parent / "manifest.json").write_text(json.dumps(RELEASE), encoding="utf-8")
    nginx.site.write_text(render_site(site_variables(nginx, backend_hosts, **overrides)), encoding="utf-8")
    nginx.conf.write_text(main_conf(prefix, nginx.site), encoding="utf-8")
    return nginx


# --- main-backend --------------------------------------------------------------------------------------


@dataclass
class LocalBackend:
    """main-backend of the local stack; stop()/start() end and restart its process by PID, same port."""

    cluster: Cluster

    @property
    def url(self) -> str:
        return self.cluster["main-backend"].url

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    def stop(self) -> None:
        self.cluster.stop("main-backend")

    def start(self) -> None:
        self.cluster.start("main-backend")


def use_offline_llm(cluster: Cluster) -> None:
    """main-backend answers with the paced offline dev provider, not ai-stack (which is not started here)."""
    path = cluster["main-backend"].config_path
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["llm"] = {"provider": "offline", "offline_chunk_delay_s": 0.02}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@dataclass
class LocalStack:
    target: UiTarget
    nginx: Nginx
    backend: LocalBackend


@contextlib.contextmanager
def local_stack(root: Path, redis_url: str) -> Iterator[LocalStack]:
    (root / "cluster").mkdir(parents=True, exist_ok=True)
    with running_cluster(
        root / "cluster", redis_url, phase="logging", names=("main-backend",), start=()
    ) as cluster:
        use_offline_llm(cluster)
        backend = LocalBackend(cluster)
        backend.start()
        nginx = prepare_nginx(root / "nginx", [backend.host_port])
        checked = nginx.test_config()
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the rendered site:\n{checked.stderr}")
        nginx.start()
        try:
            wait_for(nginx.base_url + "/api/health")
            yield LocalStack(UiTarget(nginx.base_url, backend), nginx, backend)
        finally:
            nginx.stop()


def wait_for(url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s}s")


def require(*, browser: bool, nginx: bool) -> None:
    """Call at a test module's top: skip the module (or, under CI, fail it) when a tool is missing. CI
    installs them, so a skip there would hide that nothing ran."""
    missing = missing_tools(browser=browser, nginx=nginx)
    if not missing:
        return
    reason = "UI tests need " + ", ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI installs them; see .ci/run)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def missing_tools(*, browser: bool, nginx: bool) -> list[str]:
    """What this machine lacks for the UI tests, as install hints."""
    missing: list[str] = []
    if nginx and shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx (apt-get install nginx)")
    if browser:
        if not CHROMIUM.exists():
            missing.append("chromium (apt-get install chromium)")
        try:
            import playwright  # noqa: F401
        except ImportError:
            missing.append("playwright (pip install -e '.[test]')")
    return missing
