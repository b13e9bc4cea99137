"""The Redis ACL filter plugin (ansible/plugins/filter/redis_acl.py), loaded by path like Ansible does."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.ansible_plugins import load_filter_plugin

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "ansible" / "plugins" / "filter" / "redis_acl.py"
SERVICE_USERS = ["main-backend", "npu-worker", "ai-stack", "browser-service"]


acl = load_filter_plugin(PLUGIN.name, "autobot_redis_acl_filter")


@pytest.fixture
def services(services_matrix_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(services_matrix_file.read_text(encoding="utf-8"))
    return dict(data["autobot_services"])


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _hashes(users: list[str]) -> dict[str, str]:
    return {user: _hash(f"pw-{user}") for user in users}


ALL_USERS = ["admin", *SERVICE_USERS]


def test_filters_are_exported() -> None:
    names = set(acl.FilterModule().filters())
    assert names == {
        "redis_acl_users",
        "redis_password_hashes",
        "redis_acl_rules",
        "redis_acl_parse",
        "redis_acl_checks",
        "redis_acl_dryruns",
        "redis_acl_dryrun_problems",
    }


def test_users_are_admin_then_services_with_a_redis_section_in_matrix_order(services: dict[str, Any]) -> None:
    assert acl.redis_acl_users(services) == ALL_USERS
    assert acl.redis_acl_users(services, "root-admin")[0] == "root-admin"


def test_password_hashes_are_sha256_hex() -> None:
    assert acl.redis_password_hashes({"admin": "secret"}) == {"admin": _hash("secret")}
    assert acl.redis_password_hashes(None) == {}
    assert acl.redis_password_hashes({}) == {}


@pytest.mark.parametrize("bad", [None, "", 42])
def test_password_hashes_refuse_empty_or_non_string_and_never_echo_the_value(bad: Any) -> None:
    with pytest.raises(acl.RedisAclError) as err:
        acl.redis_password_hashes({"npu-worker": bad, "admin": "do-not-echo-me"})
    assert "npu-worker" in str(err.value)
    assert "do-not-echo-me" not in str(err.value)


def test_rules_for_the_real_matrix(services: dict[str, Any]) -> None:
    hashes = _hashes(ALL_USERS)
    lines = acl.redis_acl_rules(services, hashes)
    assert lines[0] == "user default off resetkeys resetchannels -@all"
    assert lines[1] == f"user admin on #{hashes['admin']} ~* &* +@all"
    assert [line.split()[1] for line in lines] == ["default", *ALL_USERS]
    assert lines[3] == (
        f"user npu-worker on #{hashes['npu-worker']} resetchannels ~cache:* ~vectors:* ~nonce:npu-worker:* "
        "-@all +get +set +del +expire +exists +mget +ping +select +client|setname"
    )
    backend = lines[2].split()
    assert backend[:5] == ["user", "main-backend", "on", f"#{hashes['main-backend']}", "resetchannels"]
    patterns = [t for t in backend if t.startswith("~")]
    expected = [f"~{k}" for k in services["main-backend"]["redis"]["keys"]]
    assert patterns == [*expected, "~nonce:main-backend:*"]
    # Commands exactly from the matrix, in order, after -@all (order matters: -@dangerous comes last).
    all_index = backend.index("-@all")
    assert backend[all_index + 1 :] == services["main-backend"]["redis"]["commands"]
    assert backend[-1] == "-@dangerous"


def test_no_line_is_a_comment_or_holds_a_plaintext_password(services: dict[str, Any]) -> None:
    lines = acl.redis_acl_rules(services, _hashes(ALL_USERS))
    for line in lines:
        assert not line.lstrip().startswith("#")
        assert "\n" not in line
        tokens = line.split()
        assert not any(t.startswith((">", "<")) for t in tokens)
        assert "nopass" not in tokens
        assert "allkeys" not in tokens
        assert "allcommands" not in tokens


def test_each_service_user_has_its_nonce_space_once(services: dict[str, Any]) -> None:
    services = copy.deepcopy(services)
    services["npu-worker"]["redis"]["keys"].append("nonce:npu-worker:*")
    lines = acl.redis_acl_rules(services, _hashes(ALL_USERS))
    npu = next(line for line in lines if line.split()[1] == "npu-worker")
    assert npu.split().count("~nonce:npu-worker:*") == 1
    for user in SERVICE_USERS:
        line = next(line for line in lines if line.split()[1] == user)
        assert f"~nonce:{user}:*" in line.split()


def test_rotation_keeps_the_previous_hash_then_drops_it(services: dict[str, Any]) -> None:
    hashes = _hashes(ALL_USERS)
    old = _hash("old npu password")
    during = acl.redis_acl_rules(services, hashes, {"npu-worker": old})
    npu = next(line for line in during if line.split()[1] == "npu-worker").split()
    assert npu[3:5] == [f"#{hashes['npu-worker']}", f"#{old}"]
    after = acl.redis_acl_rules(services, hashes, {})
    assert f"#{old}" not in " ".join(after)
    # A previous hash equal to the current one is not repeated.
    same = acl.redis_acl_rules(services, hashes, {"admin": hashes["admin"]})
    assert same[1].split().count(f"#{hashes['admin']}") == 1


def test_a_missing_hash_names_the_user(services: dict[str, Any]) -> None:
    hashes = _hashes(ALL_USERS)
    del hashes["browser-service"]
    with pytest.raises(acl.RedisAclError, match="browser-service"):
        acl.redis_acl_rules(services, hashes)


def test_unknown_users_are_refused(services: dict[str, Any]) -> None:
    hashes = _hashes([*ALL_USERS, "frontend"])
    with pytest.raises(acl.RedisAclError, match="frontend"):
        acl.redis_acl_rules(services, hashes)
    with pytest.raises(acl.RedisAclError, match="npu_worker"):
        acl.redis_acl_rules(services, _hashes(ALL_USERS), {"npu_worker": _hash("x")})


@pytest.mark.parametrize("bad", ["ABCDEF" * 10 + "abcd", "a" * 63, "g" * 64, "a" * 65, "", 7])
def test_hashes_must_be_64_lower_hex(services: dict[str, Any], bad: Any) -> None:
    hashes = _hashes(ALL_USERS)
    hashes["ai-stack"] = bad
    with pytest.raises(acl.RedisAclError, match="ai-stack"):
        acl.redis_acl_rules(services, hashes)
    with pytest.raises(acl.RedisAclError, match="ai-stack"):
        acl.redis_acl_rules(services, _hashes(ALL_USERS), {"ai-stack": bad})


@pytest.mark.parametrize(
    "pattern",
    ["cache:* ~*", "cache:*\n", "", "cache:'x'", 'cache:"x"', "%RW~x", "~x", "+x", "a" * 300, 5],
)
def test_unsafe_key_patterns_are_refused(services: dict[str, Any], pattern: Any) -> None:
    services = copy.deepcopy(services)
    services["ai-stack"]["redis"]["keys"] = [pattern]
    with pytest.raises(acl.RedisAclError, match="ai-stack"):
        acl.redis_acl_users(services)


@pytest.mark.parametrize(
    "command",
    ["get", "+get +flushall", "+get\n", "allcommands", "nopass", ">secret", "+GET", "+@", "+a|b|c", "~*", ""],
)
def test_unsafe_command_rules_are_refused(services: dict[str, Any], command: str) -> None:
    services = copy.deepcopy(services)
    services["npu-worker"]["redis"]["commands"] = ["+ping", command]
    with pytest.raises(acl.RedisAclError, match="npu-worker"):
        acl.redis_acl_users(services)


@pytest.mark.parametrize("section", [[], "cache:*", {"keys": [], "commands": ["+get"]}, {"keys": ["a:*"]}])
def test_malformed_redis_sections_are_refused(services: dict[str, Any], section: Any) -> None:
    services = copy.deepcopy(services)
    services["npu-worker"]["redis"] = section
    with pytest.raises(acl.RedisAclError, match="npu-worker"):
        acl.redis_acl_users(services)


@pytest.mark.parametrize("service_id", ["default", "Npu", "npu worker", "npu\nworker"])
def test_service_ids_must_be_safe_user_names(service_id: str) -> None:
    services = {service_id: {"redis": {"keys": ["a:*"], "commands": ["+get"]}}}
    with pytest.raises(acl.RedisAclError):
        acl.redis_acl_users(services)


@pytest.mark.parametrize("admin", ["default", "Admin", "ad min", "npu-worker", ""])
def test_admin_user_name_is_checked(services: dict[str, Any], admin: str) -> None:
    with pytest.raises(acl.RedisAclError):
        acl.redis_acl_users(services, admin)


def test_a_matrix_without_redis_sections_gives_default_and_admin_only() -> None:
    lines = acl.redis_acl_rules({"web": {"port": 80}}, {"admin": _hash("a")})
    assert [line.split()[1] for line in lines] == ["default", "admin"]
    with pytest.raises(acl.RedisAclError):
        acl.redis_acl_users(["not", "a", "mapping"])


def test_parse_gives_setuser_arguments(services: dict[str, Any]) -> None:
    lines = acl.redis_acl_rules(services, _hashes(ALL_USERS))
    parsed = acl.redis_acl_parse(lines)
    assert [p["user"] for p in parsed] == ["default", *ALL_USERS]
    assert parsed[0]["rules"] == ["off", "resetkeys", "resetchannels", "-@all"]
    for line, entry in zip(lines, parsed, strict=True):
        assert " ".join(["user", entry["user"], *entry["rules"]]) == line


@pytest.mark.parametrize(
    "lines", [["user admin"], ["# comment"], ["user admin on\nuser x on"], ["user a on", "user a off"], "x"]
)
def test_parse_refuses_malformed_lines(lines: Any) -> None:
    with pytest.raises(acl.RedisAclError):
        acl.redis_acl_parse(lines)


def test_checks_probe_every_pattern_refuse_flushall_config_and_outside_keys(services: dict[str, Any]) -> None:
    checks = {c["user"]: c for c in acl.redis_acl_checks(services)}
    assert list(checks) == SERVICE_USERS
    npu = checks["npu-worker"]
    assert npu["allowed"] == [
        ["get", "cache:acl-probe"],
        ["get", "vectors:acl-probe"],
        ["get", "nonce:npu-worker:acl-probe"],
    ]
    assert ["flushall"] in npu["refused"]
    assert ["config", "get", "maxmemory"] in npu["refused"]
    # main-backend is granted categories: GET (in +@read) is its probe.
    assert checks["main-backend"]["allowed"][0] == ["get", "chat:acl-probe"]
    for user, check in checks.items():
        outside = check["refused"][-1][1]
        patterns = [*services[user]["redis"]["keys"], f"nonce:{user}:*"]
        assert not any(fnmatch.fnmatchcase(outside, p) for p in patterns)
        for probe in check["allowed"]:
            assert any(fnmatch.fnmatchcase(probe[1], p) for p in patterns)


def test_checks_use_a_granted_command_with_its_arity() -> None:
    services = {"svc": {"redis": {"keys": ["s:*"], "commands": ["+ping", "+sadd", "+smembers"]}}}
    assert acl.redis_acl_checks(services)[0]["allowed"][0] == ["sadd", "s:acl-probe", "m"]


def test_checks_refuse_a_service_owning_every_key_or_without_a_data_command() -> None:
    with pytest.raises(acl.RedisAclError, match="svc"):
        acl.redis_acl_checks({"svc": {"redis": {"keys": ["*"], "commands": ["+get"]}}})
    with pytest.raises(acl.RedisAclError, match="svc"):
        acl.redis_acl_checks({"svc": {"redis": {"keys": ["s:*"], "commands": ["+ping", "+publish"]}}})


def test_dry_runs_are_redis_cli_lines_with_their_expected_answer(services: dict) -> None:
    runs = acl.redis_acl_dryruns(acl.redis_acl_checks(services))
    assert runs[-1] == {
        "user": "default",
        "args": ["ping"],
        "expect": "refused",
        "line": "ACL DRYRUN default ping",
    }
    npu = [r for r in runs if r["user"] == "npu-worker"]
    assert {r["expect"] for r in npu} == {"ok", "refused"}
    assert all(r["line"].startswith("ACL DRYRUN npu-worker ") for r in npu)
    assert acl._quote('a b"c') == '"a b\\"c"'
    assert acl._quote("cache:x") == "cache:x"


def test_dry_run_problems_name_what_answered_wrongly(services: dict) -> None:
    runs = acl.redis_acl_dryruns(acl.redis_acl_checks(services))
    right = ["OK" if r["expect"] == "ok" else "This user has no permissions" for r in runs]
    assert acl.redis_acl_dryrun_problems(runs, right) == []
    wrong = list(right)
    wrong[0] = "This user has no permissions to access the 'x' key"
    wrong[-1] = "OK"
    problems = acl.redis_acl_dryrun_problems(runs, wrong)
    assert len(problems) == 2
    assert "refused although needed" in problems[0]
    assert problems[1].startswith("default: ping: allowed although forbidden")
    assert "expected" in acl.redis_acl_dryrun_problems(runs, right[:-1])[0]
