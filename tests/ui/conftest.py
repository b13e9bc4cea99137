"""Fixtures of the UI tests: the local stack (real redis-server, main-backend over HTTP, nginx from the role's
template), the target the browser tests drive, and a real headless Chromium (Debian's) through Playwright.

Target: the local stack by default. With AUTOBOT_UI_BASE_URL set, the browser tests drive that URL instead
(e.g. the local cluster's frontend on http://127.0.0.1:5173) and the nginx tests, which need the rendered
config and its logs, skip. Screenshots go to AUTOBOT_UI_ARTIFACTS (default tests/ui/artifacts/).

Missing chromium, nginx or playwright skips the tests with the install hint, except under CI (env CI set),
where it is a failure (ui_stack.require).
"""

from __future__ import annotations

import os
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


def deployed_target() -> UiTarget | None:
    """The target named by the environment, if any (AUTOBOT_UI_BASE_URL)."""
    base_url = os.environ.get("AUTOBOT_UI_BASE_URL", "").strip()
    if not base_url:
        return None
    # A BackendControl for the deployed cluster (stop/start main-backend's unit) plugs in here; without
    # one the outage test skips.
    return UiTarget(base_url=base_url.rstrip("/"), backend=None)


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
