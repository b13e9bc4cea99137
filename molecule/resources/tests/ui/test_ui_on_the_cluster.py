"""The browser tests of tests/ui/, against the deployed cluster: the page from the frontend machine's
nginx, the API through it to main-backend, the reply streamed through ai-stack, main-backend stopped and
started on its machine. Screenshots are kept in .autobot/test-results/ui/."""

from __future__ import annotations

import os
import subprocess

from conftest import REPO, RESULTS_DIR, molecule_inventory

FRONTEND_URL = "http://127.0.0.1:25173"  # the frontend's port, published on loopback (.config/molecule)


def test_the_browser_tests_pass_against_the_cluster() -> None:
    artifacts = RESULTS_DIR / "ui"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AUTOBOT_UI_BASE_URL": FRONTEND_URL,
        "AUTOBOT_UI_BACKEND_INVENTORY": molecule_inventory(),
        "AUTOBOT_UI_ARTIFACTS": str(artifacts),
        "CI": os.environ.get("CI", "1"),
    }
    result = subprocess.run(
        ["pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/ui/test_browser.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    (artifacts / "pytest.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert " passed" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
