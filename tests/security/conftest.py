"""Fixtures for the service-auth tests: a controller keyring, key dirs as deployed, the real matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis
from tests.security.auth_support import MATRIX_FILE, controller_keyring, write_key_dir

from autobot.security.keyring import Keyring
from autobot.security.keyring_file import ControllerKeyring
from autobot.security.matrix import Matrix
from autobot.security.replay import NonceStore
from autobot.security.verify import VerifyContext

CALLEE = "npu-worker"


@pytest.fixture(scope="session")
def ring() -> ControllerKeyring:
    return controller_keyring()


@pytest.fixture(scope="session")
def key_root(tmp_path_factory: pytest.TempPathFactory, ring: ControllerKeyring) -> Path:
    root = tmp_path_factory.mktemp("service-keys")
    for service in ("main-backend", "npu-worker", "ai-stack", "browser-service"):
        write_key_dir(root / service, service, ring)
    return root


@pytest.fixture(scope="session")
def keyrings(key_root: Path) -> dict[str, Keyring]:
    """Each service's Keyring, loaded from its own deployed-style key directory."""
    return {d.name: Keyring.load_dir(d, d.name) for d in key_root.iterdir()}


@pytest.fixture(scope="session")
def npu_matrix() -> Matrix:
    return Matrix.load(MATRIX_FILE, CALLEE)


@pytest.fixture
def ctx(redis_client: Redis, keyrings: dict[str, Keyring], npu_matrix: Matrix) -> VerifyContext:
    return VerifyContext(
        callee=CALLEE, keyring=keyrings[CALLEE], matrix=npu_matrix, nonces=NonceStore(redis_client, 600)
    )
