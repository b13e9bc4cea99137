"""Redis on the redis_stack machine (role `redis`): service, configuration, ACL file, what each user may do.

Runs on every host of a scenario and skips those outside the redis_stack group. Expectations come from the
service matrix. The admin password is read on the machine from the file the service_keys role writes; it never
appears on a command line (the shell expands it into REDISCLI_AUTH).
"""

from __future__ import annotations

import fnmatch
import secrets
import shlex
from typing import Any

import pytest

from conftest import host_groups

ADMIN_PASSWORD_FILE = "/etc/autobot/service-keys/redis-admin.password"
CONF = "/etc/redis/redis.conf"
ACL_FILE = "/etc/redis/users.acl"


@pytest.fixture
def redis_host(host: Any) -> Any:
    if "redis_stack" not in host_groups(host):
        pytest.skip("not a redis_stack host")
    return host


@pytest.fixture
def port(services: dict[str, Any]) -> int:
    return int(services["redis-stack"]["port"])


def _service_users(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {sid: svc["redis"] for sid, svc in services.items() if svc.get("redis")}


def _cli(host: Any, port: int, *args: str, user: str | None = None, auth: str | None = None) -> str:
    """redis-cli on the machine; `auth` is a shell expression giving the password (expanded in the shell)."""
    prefix = f"REDISCLI_AUTH={auth} " if auth else ""
    login = f"--user {shlex.quote(user)} " if user else ""
    command = " ".join(shlex.quote(a) for a in args)
    result = host.run(f"{prefix}redis-cli --no-auth-warning -h 127.0.0.1 -p {port} {login}{command}")
    return str(result.stdout).strip()


def _admin(host: Any, port: int, *args: str) -> str:
    return _cli(host, port, *args, user="admin", auth=f'"$(cat {ADMIN_PASSWORD_FILE})"')


def _service_name(host: Any) -> str:
    return str(host.ansible.get_variables().get("redis_service_name", "redis-server"))


def test_redis_is_enabled_running_and_listening(redis_host: Any, port: int) -> None:
    service = redis_host.service(_service_name(redis_host))
    assert service.is_enabled
    assert service.is_running
    assert redis_host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_config_uses_the_acl_file_and_protected_mode(redis_host: Any) -> None:
    conf = redis_host.file(CONF)
    lines = [line.split() for line in conf.content_string.splitlines() if line.strip() and line[0] != "#"]
    directives = {words[0]: words[1:] for words in lines}
    assert directives["aclfile"] == [ACL_FILE]
    assert directives["protected-mode"] == ["yes"]
    assert directives["appendonly"] == ["yes"]
    assert directives["appendfsync"] == ["everysec"]
    assert directives.get("save"), "RDB save points must be explicit"
    assert "maxmemory" in directives
    assert "maxmemory-policy" in directives
    assert "requirepass" not in directives
    assert "user" not in directives, "user lines and aclfile exclude each other"
    assert (conf.user, conf.group, conf.mode) == ("redis", "redis", 0o640)


def test_acl_file_is_owned_by_redis_and_holds_only_hashes(redis_host: Any) -> None:
    acl = redis_host.file(ACL_FILE)
    assert acl.exists
    assert (acl.user, acl.mode) == ("redis", 0o640)
    for line in acl.content_string.splitlines():
        if not line.strip():
            continue
        tokens = line.split()
        assert tokens[0] == "user", f"unexpected ACL line (comments stop Redis 7.0): {line!r}"
        assert not any(t.startswith(">") for t in tokens), f"plaintext password in {ACL_FILE}"
        assert "nopass" not in tokens, f"{tokens[1]} has no password"


def test_no_plaintext_password_anywhere_in_etc_redis(redis_host: Any) -> None:
    admin_file = redis_host.file(ADMIN_PASSWORD_FILE)
    assert (admin_file.user, admin_file.mode) == ("root", 0o600)
    found = redis_host.run(f'grep -rlF -- "$(cat {ADMIN_PASSWORD_FILE})" /etc/redis')
    assert found.rc == 1, f"the admin password appears in: {found.stdout}"


def test_default_user_is_refused(redis_host: Any, port: int) -> None:
    assert "NOAUTH" in _cli(redis_host, port, "PING")
    login = "--no-auth-warning --user default --pass not-a-password"
    result = redis_host.run(f"redis-cli -h 127.0.0.1 -p {port} {login} PING")
    assert "PONG" not in result.stdout
    assert "WRONGPASS" in result.stdout + result.stderr


def test_admin_logs_in(redis_host: Any, port: int) -> None:
    assert _admin(redis_host, port, "ACL", "WHOAMI") == "admin"
    assert _admin(redis_host, port, "PING") == "PONG"


def test_every_service_user_exists(redis_host: Any, port: int, services: dict[str, Any]) -> None:
    users = set(_admin(redis_host, port, "ACL", "USERS").split())
    assert users == {"default", "admin", *_service_users(services)}


def _outside_key(service_id: str, patterns: list[str]) -> str:
    key = f"outside-of-acl:{service_id}"
    assert not any(fnmatch.fnmatchcase(key, p) for p in patterns)
    return key


@pytest.mark.parametrize("service_id", ["main-backend", "npu-worker", "ai-stack", "browser-service"])
def test_service_user_uses_its_keys_and_nothing_else(
    redis_host: Any, port: int, services: dict[str, Any], service_id: str
) -> None:
    redis = _service_users(services).get(service_id)
    if redis is None:
        pytest.skip(f"{service_id} has no redis section in the matrix")
    patterns = [*redis["keys"], f"nonce:{service_id}:*"]
    # The real password stays on the service's machine: add a throwaway second password to the real user for
    # the test (same rules), and remove it afterwards. Nothing is saved to the ACL file.
    temp = secrets.token_hex(32)
    assert _admin(redis_host, port, "ACL", "SETUSER", service_id, f">{temp}") == "OK"
    try:

        def as_service(*args: str) -> str:
            return _cli(redis_host, port, *args, user=service_id, auth=temp)

        # PONG proves the login: the default user is off, so a failed AUTH would answer NOAUTH.
        assert as_service("PING") == "PONG"
        for pattern in patterns:
            key = pattern.replace("*", f"testinfra-{service_id}")
            assert fnmatch.fnmatchcase(key, pattern)
            assert as_service("SET", key, "v") == "OK", key
            assert as_service("GET", key) == "v", key
            assert as_service("DEL", key) == "1", key
        outside = _outside_key(service_id, patterns)
        for args in (("SET", outside, "v"), ("GET", outside), ("FLUSHALL",), ("CONFIG", "GET", "maxmemory")):
            reply = as_service(*args)
            assert "NOPERM" in reply, f"{service_id} was not refused {' '.join(args)}: {reply!r}"
    finally:
        assert _admin(redis_host, port, "ACL", "SETUSER", service_id, f"<{temp}") == "OK"
