"""Filters that render the Redis ACL from the service matrix (role `redis`).

Pure Python (no import from the deployed package), so the unit tests load this file by path.

- ``redis_acl_users(services, admin_user)``: the ordered ACL user names (admin, then every service with a
  ``redis:`` section, in matrix order); validates the matrix's ``redis:`` sections.
- ``redis_password_hashes(passwords)``: ``{user: sha256 hex}`` of plaintext passwords (``#<hash>`` form).
- ``redis_acl_rules(services, hashes, previous_hashes, admin_user)``: the ordered ACL file lines.
- ``redis_acl_parse(lines)``: ``[{user, rules}]`` of those lines, for ``ACL SETUSER <user> reset <rules>``.
- ``redis_acl_checks(services)``: per service user, the ``ACL DRYRUN`` probes that must pass or be refused.

The lines carry no comment: Redis 7.0 refuses to start on a ``#`` comment line in an ACL file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from typing import Any

try:
    from ansible.errors import AnsibleFilterError as _ErrorBase
except ImportError:  # pragma: no cover - the unit tests run with Ansible installed, but need not
    _ErrorBase = ValueError


class RedisAclError(_ErrorBase):  # type: ignore[misc]
    """The matrix, a password or a hash cannot make a safe ACL line."""


DEFAULT_USER_LINE = "user default off resetkeys resetchannels -@all"
# A user name: a service id or the admin user (lower-case, digits, '-' and '_').
_USER = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# A command rule: +cmd, -cmd, +cmd|sub, +@category, -@category.
_COMMAND = re.compile(r"^[+-](@[a-z][a-z0-9_-]*|[a-z][a-z0-9_-]*(\|[a-z][a-z0-9_-]*)?)$")
# A key pattern (without its '~'): printable, no space, no quote, no leading rule character.
_PATTERN = re.compile(r"^[A-Za-z0-9:_.*?\[\]{}/@|=^,-][A-Za-z0-9:_.*?\[\]{}/@|=^,+-]{0,255}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Commands a service uses for its own connection management: not a data-access probe.
_CONNECTION_COMMANDS = {"ping", "select", "client", "auth", "hello", "quit", "reset", "echo"}
# Data commands the verification knows how to call with valid arity: name -> arguments after the key.
_PROBE_ARGS: dict[str, list[str]] = {
    "get": [],
    "set": ["1"],
    "del": [],
    "exists": [],
    "expire": ["60"],
    "ttl": [],
    "mget": [],
    "incr": [],
    "smembers": [],
    "sadd": ["m"],
    "srem": ["m"],
    "lrange": ["0", "-1"],
    "rpush": ["v"],
    "hget": ["f"],
    "hset": ["f", "v"],
}
# Categories that include GET (the probe used when a user is granted categories, not commands).
_CATEGORIES_WITH_GET = {"+@all", "+@read", "+@string"}


def _fail(message: str) -> RedisAclError:
    return RedisAclError(f"redis_acl: {message}")


def _check_admin_user(admin_user: Any) -> str:
    if not isinstance(admin_user, str) or not _USER.fullmatch(admin_user) or admin_user == "default":
        raise _fail(f"invalid admin user name {admin_user!r} (lower-case name, not 'default')")
    return admin_user


def _redis_sections(services: Any) -> list[tuple[str, list[str], list[str]]]:
    """(service id, key patterns, commands) for every service with a redis section, in matrix order."""
    if not isinstance(services, Mapping):
        raise _fail("the service matrix (autobot_services) must be a mapping")
    sections = []
    for service_id, service in services.items():
        if not isinstance(service, Mapping) or service.get("redis") is None:
            continue
        if not isinstance(service_id, str) or not _USER.fullmatch(service_id) or service_id == "default":
            raise _fail(f"service id {service_id!r} cannot be a Redis user name")
        redis = service["redis"]
        if not isinstance(redis, Mapping):
            raise _fail(f"{service_id}: the redis section must be a mapping with keys and commands")
        keys, commands = redis.get("keys"), redis.get("commands")
        if not isinstance(keys, list) or not keys:
            raise _fail(f"{service_id}: redis.keys must be a non-empty list of key patterns")
        if not isinstance(commands, list) or not commands:
            raise _fail(f"{service_id}: redis.commands must be a non-empty list of command rules")
        for pattern in keys:
            if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
                raise _fail(f"{service_id}: unsafe key pattern {pattern!r} (one token, no space or quote)")
        for command in commands:
            if not isinstance(command, str) or not _COMMAND.fullmatch(command):
                raise _fail(
                    f"{service_id}: unsafe command rule {command!r} (+cmd, -cmd, +cmd|sub or +@category)"
                )
        sections.append((service_id, [str(k) for k in keys], [str(c) for c in commands]))
    return sections


def _nonce_pattern(service_id: str) -> str:
    return f"nonce:{service_id}:*"


def redis_acl_users(services: Any, admin_user: str = "admin") -> list[str]:
    """The ACL users the matrix defines: the admin user first, then the services with a redis section."""
    admin = _check_admin_user(admin_user)
    names = [admin] + [service_id for service_id, _, _ in _redis_sections(services)]
    if names.count(admin) > 1:
        raise _fail(f"the admin user name {admin!r} is also a service id")
    return names


def redis_password_hashes(passwords: Any) -> dict[str, str]:
    """{user: sha256 hex of its password} (the unsalted `#<hash>` form of Redis ACLs)."""
    if passwords is None:
        return {}
    if not isinstance(passwords, Mapping):
        raise _fail("passwords must be a mapping of ACL user name -> password")
    hashes = {}
    for user, password in passwords.items():
        if not isinstance(password, str) or not password:
            # Never echo the value: it is a secret.
            raise _fail(f"the password of ACL user {user!r} must be a non-empty string")
        hashes[str(user)] = hashlib.sha256(str(password).encode("utf-8")).hexdigest()
    return hashes


def _hash_rules(user: str, hashes: Mapping[str, Any], previous: Mapping[str, Any]) -> list[str]:
    current = hashes.get(user)
    if current is None:
        raise _fail(f"no password hash for ACL user {user!r}")
    rules = []
    for value in (current, previous.get(user)):
        if value is None:
            continue
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            raise _fail(f"the hash for ACL user {user!r} is not 64 lower-case hex characters")
        rule = f"#{value}"
        if rule not in rules:
            rules.append(rule)
    return rules


def redis_acl_rules(
    services: Any,
    hashes: Any,
    previous_hashes: Any = None,
    admin_user: str = "admin",
) -> list[str]:
    """The ACL file lines, in order: the disabled default user, the admin, one user per service.

    `hashes` maps every ACL user to the sha256 of its password; `previous_hashes` (optional) holds the
    previous hash of users in a password rotation: such a user accepts both until it is emptied.
    """
    previous_hashes = {} if previous_hashes is None else previous_hashes
    for label, mapping in (("hashes", hashes), ("previous_hashes", previous_hashes)):
        if not isinstance(mapping, Mapping):
            raise _fail(f"{label} must be a mapping of ACL user name -> sha256 hex")
    users = redis_acl_users(services, admin_user)
    for label, mapping in (("hashes", hashes), ("previous_hashes", previous_hashes)):
        unknown = sorted(str(u) for u in mapping if u not in users)
        if unknown:
            raise _fail(f"{label} name unknown ACL users {unknown} (known: {users})")

    lines = [DEFAULT_USER_LINE]
    admin = users[0]
    lines.append(
        " ".join(["user", admin, "on", *_hash_rules(admin, hashes, previous_hashes), "~*", "&*", "+@all"])
    )
    for service_id, keys, commands in _redis_sections(services):
        patterns = [f"~{pattern}" for pattern in keys]
        nonce = f"~{_nonce_pattern(service_id)}"
        if nonce not in patterns:
            patterns.append(nonce)
        rule = [
            "user",
            service_id,
            "on",
            *_hash_rules(service_id, hashes, previous_hashes),
            "resetchannels",
            *patterns,
            "-@all",
            *commands,
        ]
        lines.append(" ".join(rule))
    return lines


def redis_acl_parse(lines: Any) -> list[dict[str, Any]]:
    """[{user, rules}] of ACL file lines: the arguments of `ACL SETUSER <user> reset <rules...>`."""
    if not isinstance(lines, list):
        raise _fail("ACL lines must be a list")
    parsed = []
    seen = set()
    for line in lines:
        if not isinstance(line, str) or "\n" in line or "\r" in line:
            raise _fail("an ACL line must be a single-line string")
        tokens = line.split()
        if len(tokens) < 3 or tokens[0] != "user" or not _USER.fullmatch(tokens[1]):
            raise _fail(f"not an ACL user line: {tokens[:2]}")
        if tokens[1] in seen:
            raise _fail(f"ACL user {tokens[1]!r} appears twice")
        seen.add(tokens[1])
        parsed.append({"user": tokens[1], "rules": tokens[2:]})
    return parsed


def _outside_key(service_id: str, patterns: list[str]) -> str:
    for candidate in (f"autobot-acl-probe-outside:{service_id}", f"zz-acl-probe-{service_id}"):
        if not any(fnmatch.fnmatchcase(candidate, pattern) for pattern in patterns):
            return candidate
    raise _fail(
        f"{service_id}: its key patterns match every key; a service user must not own the whole keyspace"
    )


def _probe_key(pattern: str) -> str:
    """A concrete key matching a glob pattern (wildcards replaced by a fixed word)."""
    key = re.sub(r"\[[^\]]*\]", "a", pattern)
    key = key.replace("*", "acl-probe").replace("?", "a").replace("\\", "")
    if not fnmatch.fnmatchcase(key, pattern):
        raise _fail(f"cannot build a key matching the pattern {pattern!r}")
    return key


def _probe_command(service_id: str, commands: list[str]) -> str:
    denied = {c[1:] for c in commands if c.startswith("-") and not c.startswith("-@")}
    for command in commands:
        name = command[1:]
        if command.startswith("+") and name in _PROBE_ARGS and name not in denied:
            return name
    if any(c in _CATEGORIES_WITH_GET for c in commands) and "get" not in denied:
        return "get"
    raise _fail(f"{service_id}: no data command to verify the ACL with (grant e.g. +get)")


def redis_acl_checks(services: Any) -> list[dict[str, Any]]:
    """Per service user: `ACL DRYRUN` argument lists that must answer OK, and those that must be refused."""
    checks = []
    for service_id, keys, commands in _redis_sections(services):
        patterns = list(keys)
        if _nonce_pattern(service_id) not in patterns:
            patterns.append(_nonce_pattern(service_id))
        command = _probe_command(service_id, commands)
        args = _PROBE_ARGS[command]
        allowed = [[command, _probe_key(pattern), *args] for pattern in patterns]
        refused = [
            ["flushall"],
            ["config", "get", "maxmemory"],
            [command, _outside_key(service_id, patterns), *args],
        ]
        checks.append({"user": service_id, "allowed": allowed, "refused": refused})
    return checks


def _quote(arg: str) -> str:
    """One argument as redis-cli reads it from standard input (its own quoting, sdssplitargs)."""
    if arg and all(c.isalnum() or c in "-_:.*|@~+" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_acl_dryruns(checks: Any) -> list[dict[str, Any]]:
    """Every ACL DRYRUN of `redis_acl_checks`, plus the default user, as redis-cli input lines with what each
    must answer (OK, or a refusal): all of them go to Redis in one redis-cli call, one reply line each."""
    runs = []
    for check in checks:
        for expect, key in (("ok", "allowed"), ("refused", "refused")):
            for args in check[key]:
                words = ["ACL", "DRYRUN", check["user"], *args]
                runs.append({"user": check["user"], "args": list(args), "expect": expect,
                             "line": " ".join(_quote(str(w)) for w in words)})  # fmt: skip
    runs.append({"user": "default", "args": ["ping"], "expect": "refused", "line": "ACL DRYRUN default ping"})
    return runs


def redis_acl_dryrun_problems(runs: Any, replies: Any) -> list[str]:
    """What did not answer as it must: 'user: args: reply' for each, or why the replies cannot be read."""
    replies = list(replies)
    if len(replies) != len(runs):
        return [f"expected {len(runs)} replies from redis-cli, got {len(replies)}: {replies[:3]}"]
    problems = []
    for run, reply in zip(runs, replies, strict=True):
        allowed = reply.strip() == "OK"
        if allowed != (run["expect"] == "ok"):
            verdict = "refused although needed" if run["expect"] == "ok" else "allowed although forbidden"
            problems.append(f"{run['user']}: {' '.join(run['args'])}: {verdict} ({reply.strip()})")
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "redis_acl_dryruns": redis_acl_dryruns,
            "redis_acl_dryrun_problems": redis_acl_dryrun_problems,
            "redis_acl_users": redis_acl_users,
            "redis_password_hashes": redis_password_hashes,
            "redis_acl_rules": redis_acl_rules,
            "redis_acl_parse": redis_acl_parse,
            "redis_acl_checks": redis_acl_checks,
        }
