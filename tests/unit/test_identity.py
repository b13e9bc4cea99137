"""Who a request is: the trusted identity header, the anonymous cookie, and the config that says who may set
the header (validated with clear errors, rendered from the service matrix)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from fastapi import Response
from pydantic import ValidationError
from tests.support.ansible_plugins import load_filter_plugin

from autobot.config import BackendConfig, ConfigError, IdentityConfig
from autobot.services.main_backend.identity import (
    COOKIE_MAX_AGE_S,
    IdentityPolicy,
    InvalidIdentityError,
    TrustedProxies,
    identify,
    issue_client_cookie,
    resolve_proxies,
)
from autobot.sessions import ids

FRONTEND = "192.0.2.21"
POLICY = IdentityPolicy(
    header="x-autobot-user", proxies=TrustedProxies((ipaddress.ip_network(f"{FRONTEND}/32"),))
)


def _who(
    peer: str | None,
    *,
    user: list[bytes] | None = None,
    cookie: str | None = None,
    scheme: str = "http",
    proto: str | None = None,
    policy: IdentityPolicy = POLICY,
) -> Any:
    return identify(
        policy, peer=peer, scheme=scheme, header_values=user or [], forwarded_proto=proto, cookie=cookie
    )


def test_the_header_names_the_user_only_from_a_trusted_peer() -> None:
    trusted = _who(FRONTEND, user=[b"alice"])
    assert (trusted.kind, trusted.owner) == ("user", ids.user_owner(b"alice"))
    for peer in ["192.0.2.22", "127.0.0.1", "::1", None, "testclient"]:
        ignored = _who(peer, user=[b"alice"])
        assert (ignored.kind, ignored.owner) == ("anonymous", None), peer
    mapped = _who(f"::ffff:{FRONTEND}", user=[b"alice"])  # a dual-stack socket reports IPv4 peers so
    assert mapped.kind == "user"


def test_from_an_untrusted_peer_the_cookie_decides_whatever_the_header_says() -> None:
    token = ids.new_client_token()
    caller = _who("10.9.9.9", user=[b"alice"], cookie=token)
    assert (caller.kind, caller.owner) == ("client", ids.client_owner(token))


def test_a_header_without_a_configured_name_is_never_read() -> None:
    no_header = IdentityPolicy(header=None, proxies=POLICY.proxies)
    assert _who(FRONTEND, user=[b"alice"], policy=no_header).kind == "anonymous"


def test_a_trusted_peer_with_a_broken_header_is_a_clear_400_not_a_guess() -> None:
    with pytest.raises(InvalidIdentityError, match="more than once"):
        _who(FRONTEND, user=[b"alice", b"bob"])
    with pytest.raises(InvalidIdentityError, match="not a user name"):
        _who(FRONTEND, user=[b"al\x00ice"])
    # An empty value is no value (nginx sends none when nobody logged in): the cookie decides.
    assert _who(FRONTEND, user=[b""]).kind == "anonymous"


def test_only_a_well_formed_cookie_is_an_identity() -> None:
    assert _who("10.0.0.1", cookie="guess").owner is None
    assert _who("10.0.0.1", cookie="x" * 43).kind == "client"  # any 43 url-safe chars: unguessable, not ours


def test_tls_is_taken_from_the_scheme_or_from_a_trusted_proxy_only() -> None:
    assert _who("10.0.0.1", scheme="https").tls
    assert not _who("10.0.0.1", proto="https").tls  # anyone can send X-Forwarded-Proto
    assert _who(FRONTEND, proto="https").tls
    assert not _who(FRONTEND, proto="http").tls


def test_the_issued_cookie_has_the_attributes_of_the_contract() -> None:
    response = Response()
    anonymous = _who("10.0.0.1")
    caller = issue_client_cookie(response, anonymous)
    header = response.headers["set-cookie"]
    name, _, rest = header.partition("=")
    token = rest.split(";", 1)[0]
    assert name == "autobot_client"
    assert ids.is_client_token(token)
    assert caller.owner == ids.client_owner(token)
    attributes = {part.strip().lower() for part in header.split(";")[1:]}
    assert {"httponly", "path=/api", "samesite=strict", f"max-age={COOKIE_MAX_AGE_S}"} <= attributes
    assert "secure" not in attributes
    secure = Response()
    issue_client_cookie(secure, _who(FRONTEND, proto="https"))
    assert "secure" in {p.strip().lower() for p in secure.headers["set-cookie"].split(";")}


async def test_trusted_proxies_resolve_names_at_start_up() -> None:
    proxies = await resolve_proxies(["localhost", "10.1.0.0/16", "192.0.2.7"])
    assert proxies.trusts("127.0.0.1")
    assert proxies.trusts("10.1.200.3")
    assert proxies.trusts("192.0.2.7")
    assert not proxies.trusts("192.0.2.8")
    with pytest.raises(ConfigError, match=r"cannot resolve 'no-such-host\.invalid'"):
        await resolve_proxies(["no-such-host.invalid"])


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"header": "X Autobot"}, "is not an HTTP header name"),
        ({"header": "Cookie", "trusted_proxies": ["10.0.0.1"]}, "already has a meaning"),
        ({"header": "X-Service-ID", "trusted_proxies": ["10.0.0.1"]}, "already has a meaning"),
        ({"header": "X-Autobot-User"}, "trusted_proxies is empty"),
        ({"header": "X-Autobot-User", "trusted_proxies": ["a/b"]}, "not an IP address"),
        ({"header": "X-Autobot-User", "trusted_proxies": ["10.0.0.1/8"]}, "not an IP address"),
        ({"header": "X-Autobot-User", "trusted_proxies": ["-x-"]}, "not an IP address"),
        ({"trusted_proxies": ["ok"], "typo": 1}, "typo"),
    ],
)
def test_identity_config_errors_are_clear(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IdentityConfig.model_validate(section)


def test_backend_config_defaults_and_heartbeat() -> None:
    base = {"database": "/d.db", "files_dir": "/f", "transcripts_dir": "/t"}
    backend = BackendConfig.model_validate(base)
    assert backend.stream_heartbeat_s == 15.0
    assert backend.identity == IdentityConfig()
    with pytest.raises(ValidationError, match="stream_heartbeat_s"):
        BackendConfig.model_validate({**base, "stream_heartbeat_s": 0})


def _cluster_filters() -> ModuleType:
    return load_filter_plugin("autobot_cluster.py", "autobot_cluster_filter")


def test_the_matrix_says_who_may_set_the_identity_header(services_matrix_file: Path) -> None:
    services = yaml.safe_load(services_matrix_file.read_text(encoding="utf-8"))["autobot_services"]
    filters = _cluster_filters()
    groups = {"frontend": ["web-1", "web-2"], "main_backend": ["api-1"]}
    hostvars = {"web-1": {"autobot_address": "192.0.2.21"}, "web-2": {}, "api-1": {}}
    section = filters.autobot_identity(services, "main-backend", groups, hostvars)
    # Every frontend machine, at the address the cluster reaches it by (the host name when none is set).
    assert section == {"header": "X-Autobot-User", "trusted_proxies": ["192.0.2.21", "web-2"]}
    assert IdentityConfig.model_validate(section).header == "X-Autobot-User"
    assert filters.autobot_identity(services, "npu-worker", groups, hostvars) == {}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "X-A"}, "exactly the keys"),
        ({"name": "X-A", "set_by": []}, "non-empty list"),
        ({"name": "X-A", "set_by": ["nginx"]}, "not a service of the matrix"),
        ({"name": "X-A", "set_by": ["npu-worker"]}, "has no host"),
    ],
)
def test_a_wrong_identity_header_entry_fails_the_render(entry: dict[str, Any], message: str) -> None:
    filters = _cluster_filters()
    services = {"main-backend": {"group": "mb", "identity_header": entry}, "npu-worker": {"group": "npu"}}
    with pytest.raises(Exception, match=message):
        filters.autobot_identity(services, "main-backend", {"mb": ["a"]}, {})
