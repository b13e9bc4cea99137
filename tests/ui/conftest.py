"""Fixtures of the UI tests: the local stack (real redis-server, main-backend over HTTP, nginx from the role's
template), the target the browser tests drive, and a real headless Chromium (Debian's) through Playwright.

Target: the local stack by default. With AUTOBOT_UI_BASE_URL set, the browser tests drive that URL instead
(e.g. the local cluster's frontend on http://127.0.0.1:5173) and the nginx tests, which need the rendered
config and its logs, skip. AUTOBOT_UI_BACKEND_INVENTORY (e.g. inventory/local, or Molecule's) lets the outage
test stop and start main-backend's units on that cluster, through Ansible, as an operator would.
Screenshots go to AUTOBOT_UI_ARTIFACTS (default tests/ui/artifacts/).

Missing chromium, nginx or playwright skips the tests with the install hint, except under CI (env CI set),
where it is a failure (ui_stack.require).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.redis_server import RedisServer
from ui_stack import CHROMIUM, LocalStack, UiTarget, local_stack

ARTIFACTS_DEFAULT = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}


class ClusterBackend:
    """main-backend on a deployed cluster: its socket and service units stopped and started through Ansible
    (the socket too, so the frontend's nginx gets "connection refused", as with a machine that is down)."""

    def __init__(self, inventory: str, host: str = "autobot-main-backend") -> None:
        self.inventory, self.host = inventory, host

    def _units(self, state: str) -> None:
        for unit in ("autobot-main-backend.socket", "autobot-main-backend.service"):
            subprocess.run(
                ["ansible", "-i", self.inventory, self.host, "-b", "-m", "ansible.builtin.systemd_service",
                 "-a", f"name={unit} state={state}"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip

    def stop(self) -> None:
        self._units("stopped")

    def start(self) -> None:
        self._units("started")


def deployed_target() -> UiTarget | None:
    """The target named by the environment, if any (AUTOBOT_UI_BASE_URL, AUTOBOT_UI_BACKEND_INVENTORY)."""
    base_url = os.environ.get("AUTOBOT_UI_BASE_URL", "").strip()
    if not base_url:
        return None
    inventory = os.environ.get("AUTOBOT_UI_BACKEND_INVENTORY", "").strip()
    return UiTarget(base_url=base_url.rstrip("/"), backend=ClusterBackend(inventory) if inventory else None)


@pytest.fixture(scope="session")
def local(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    if deployed_target() is not None:
        pytest.skip("AUTOBOT_UI_BASE_URL is set: the local nginx stack is not built")
    with local_stack(tmp_path_factory.mktemp("ui-stack"), redis_server.url) as stack:
        yield stack


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> UiTarget:
    deployed = deployed_target()
    if deployed is not None:
        return deployed
    stack: LocalStack = request.getfixturevalue("local")
    return stack.target


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("AUTOBOT_UI_ARTIFACTS") or ARTIFACTS_DEFAULT)
    path.mkdir(parents=True, exist_ok=True)
    return path


# Module scope, not session: while Playwright's sync API is active it keeps an asyncio loop marked as running
# in this thread, so every pytest-asyncio test collected after the browser tests would fail to start.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
