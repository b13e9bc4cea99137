"""Each service logs in to Redis from its own machine with its own password, within its matrix rights."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from conftest import host_service

REDIS_HOST = "autobot-redis-stack"
KEY_DIR = "/etc/autobot/service-keys"


def redis_cli(host: Any, user: str, *args: str, password_file: str = f"{KEY_DIR}/redis.password") -> Any:
    port = 6379
    command = " ".join(shlex.quote(a) for a in args)
    return host.run(
        f"REDISCLI_AUTH=$(cat {password_file}) redis-cli --no-auth-warning -h {REDIS_HOST} -p {port} "
        f"--user {shlex.quote(user)} {command}"
    )


def _redis_service(host: Any, services: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    service_id = host_service(host, services)
    redis = services[service_id].get("redis")
    if not redis:
        pytest.skip(f"{service_id} has no Redis user")
    return service_id, redis


def test_service_logs_in_with_its_own_password(host: Any, services: dict[str, Any]) -> None:
    service_id, _ = _redis_service(host, services)
    assert redis_cli(host, service_id, "PING").stdout.strip() == "PONG"


def test_service_uses_its_key_patterns(host: Any, services: dict[str, Any]) -> None:
    service_id, redis = _redis_service(host, services)
    key = redis["keys"][0].replace("*", f"testinfra-{service_id}")
    assert redis_cli(host, service_id, "SET", key, "v").stdout.strip() == "OK"
    assert redis_cli(host, service_id, "GET", key).stdout.strip() == "v"
    assert redis_cli(host, service_id, "DEL", key).stdout.strip() == "1"


def test_service_is_refused_outside_its_patterns_and_dangerous_commands(
    host: Any, services: dict[str, Any]
) -> None:
    service_id, _ = _redis_service(host, services)
    for args in (
        ("GET", "autobot:keyring-backup:local"),
        ("SET", "outside:key", "v"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
    ):
        reply = redis_cli(host, service_id, *args).stdout
        assert "NOPERM" in reply, f"{service_id} was not refused {args[0]}: {reply!r}"
    # DEBUG is also switched off server-wide (enable-debug-command no), which answers before the ACL does.
    reply = redis_cli(host, service_id, "DEBUG", "SLEEP", "0").stdout
    assert "NOPERM" in reply or "not allowed" in reply


def test_a_wrong_password_is_refused(host: Any, services: dict[str, Any]) -> None:
    service_id, _ = _redis_service(host, services)
    reply = host.run(
        f"REDISCLI_AUTH=wrong redis-cli --no-auth-warning -h {REDIS_HOST} --user {service_id} PING"
    )
    assert "PONG" not in reply.stdout
    assert "WRONGPASS" in reply.stdout + reply.stderr


def test_another_services_password_is_refused(host: Any, services: dict[str, Any]) -> None:
    service_id, _ = _redis_service(host, services)
    other = next(s for s, svc in services.items() if svc.get("redis") and s != service_id)
    reply = redis_cli(host, other, "PING")
    assert "WRONGPASS" in reply.stdout + reply.stderr


def test_the_default_user_is_refused(host: Any, services: dict[str, Any]) -> None:
    _redis_service(host, services)
    reply = host.run(f"redis-cli -h {REDIS_HOST} PING")
    assert "PONG" not in reply.stdout
