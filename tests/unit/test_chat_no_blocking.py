"""Plan fix 2, "no blocking Redis operations": no synchronous Redis client anywhere in the deployed package.

The root cause was a synchronous redis client called inside async handlers. The whole of src/autobot is
scanned (not only chat/), so it cannot come back through another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "autobot"
# redis.asyncio is the client; exceptions and backoff policies are plain data shared with it.
ALLOWED_REDIS_MODULES = ("redis.asyncio", "redis.exceptions", "redis.backoff")
# Names that block the event loop when called from a coroutine.
BLOCKING_CALLS = {("time", "sleep")}


def _allowed(module: str) -> bool:
    return any(module == ok or module.startswith(ok + ".") for ok in ALLOWED_REDIS_MODULES)


def sync_redis_uses(source: str, filename: str = "<source>") -> list[str]:
    """Lines that import or reach a synchronous redis client."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    redis_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "redis" or (alias.name.startswith("redis.") and not _allowed(alias.name)):
                    found.append(f"{filename}:{node.lineno}: import {alias.name}")
                    redis_aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            module = node.module
            if module == "redis":
                for alias in node.names:
                    if not _allowed(f"redis.{alias.name}"):
                        found.append(f"{filename}:{node.lineno}: from redis import {alias.name}")
            elif module.startswith("redis.") and not _allowed(module):
                found.append(f"{filename}:{node.lineno}: from {module} import ...")
    return found


def blocking_calls(source: str, filename: str = "<source>") -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in BLOCKING_CALLS
        ):
            found.append(f"{filename}:{node.lineno}: {node.func.value.id}.{node.func.attr}()")
    return found


def _package_sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, f"expected the package sources under {PACKAGE}"
    return files


def test_no_synchronous_redis_client_anywhere_in_the_package() -> None:
    offenders = [hit for path in _package_sources() for hit in sync_redis_uses(path.read_text(), str(path))]
    assert offenders == []


def test_no_blocking_sleep_in_the_async_services() -> None:
    scanned = [*sorted((PACKAGE / "chat").rglob("*.py")), *sorted((PACKAGE / "services").rglob("*.py"))]
    offenders = [hit for path in scanned for hit in blocking_calls(path.read_text(), str(path))]
    assert offenders == []


@pytest.mark.parametrize(
    "source",
    [
        "import redis\n",
        "import redis as r\n",
        "import redis.client\n",
        "from redis import Redis\n",
        "from redis import StrictRedis, asyncio\n",
        "from redis.client import Redis\n",
        "from redis.connection import ConnectionPool\n",
    ],
)
def test_the_scanner_catches_synchronous_clients(source: str) -> None:
    assert sync_redis_uses(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from redis.asyncio import Redis\n",
        "import redis.asyncio\n",
        "from redis.asyncio.retry import Retry\n",
        "from redis.exceptions import RedisError\n",
        "from redis.backoff import ExponentialWithJitterBackoff\n",
        "from redis import asyncio\n",
    ],
)
def test_the_scanner_accepts_the_async_client(source: str) -> None:
    assert sync_redis_uses(source) == []


def test_the_blocking_call_scanner_catches_time_sleep() -> None:
    assert blocking_calls("import time\nasync def f():\n    time.sleep(1)\n") != []
    assert blocking_calls("import asyncio\nasync def f():\n    await asyncio.sleep(1)\n") == []
