"""Who is calling main-backend: the identity every session belongs to (issue 15).

Two kinds, never confused (their owner keys have different prefixes, see `autobot.sessions.ids`):
- a user named by a login in front of nginx (basic auth, auth_request): the configured identity header,
  honoured only when the request's TCP peer is a trusted proxy (the machines the service matrix lets set it,
  `identity_header.set_by`). From any other peer the header is ignored, whatever it says;
- otherwise an anonymous browser, known by the opaque random cookie `autobot_client` that main-backend issues
  (HttpOnly, SameSite=Strict, Path=/api, Secure when the request came over TLS).

uvicorn runs with proxy_headers off, so the peer is the real TCP peer: nginx on the frontend machine, or a
client that reached main-backend directly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from fastapi import Response

from autobot.config import ConfigError, IdentityConfig, proxy_address
from autobot.sessions import ids

log = logging.getLogger(__name__)

COOKIE_NAME = "autobot_client"
COOKIE_PATH = "/api"
# Browsers keep a cookie at most 400 days (Chrome caps Max-Age there); a shorter life would lose an anonymous
# user's conversations with it, since the cookie is the only thing that says they are theirs.
COOKIE_MAX_AGE_S = 400 * 24 * 3600
FORWARDED_PROTO = "x-forwarded-proto"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidIdentityError(ValueError):
    """A trusted proxy sent an identity header that is not one user name (400: a login misconfiguration)."""


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    def trusts(self, peer: str | None) -> bool:
        if peer is None or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False  # a unix socket path or a test client's made-up host: never a trusted proxy
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


async def resolve_proxies(entries: Iterable[str]) -> TrustedProxies:
    """Each entry's networks: an IP or CIDR as written, a host name resolved now (at start-up), to every
    address it has. A name that does not resolve fails the start, naming it."""
    loop = asyncio.get_running_loop()
    networks: list[Network] = []
    for entry in entries:
        network = proxy_address(entry)
        if network is not None:
            networks.append(network)
            continue
        try:
            infos = await loop.getaddrinfo(entry, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigError(
                f"backend.identity.trusted_proxies: cannot resolve {entry!r}: {exc.strerror or exc}"
            ) from exc
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            networks.append(ipaddress.ip_network(address))
    return TrustedProxies(tuple(dict.fromkeys(networks)))


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    header: str | None = None  # lower case
    proxies: TrustedProxies = TrustedProxies()

    @classmethod
    async def from_config(cls, config: IdentityConfig) -> IdentityPolicy:
        proxies = await resolve_proxies(config.trusted_proxies)
        return cls(header=config.header.lower() if config.header else None, proxies=proxies)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity of one request. `owner` is None for a browser without (a valid) cookie yet."""

    owner: str | None
    kind: Literal["user", "client", "anonymous"]
    # The request reached nginx (or main-backend) over TLS: the cookie must then be Secure.
    tls: bool


def identify(
    policy: IdentityPolicy,
    *,
    peer: str | None,
    scheme: str,
    header_values: Sequence[bytes],
    forwarded_proto: str | None,
    cookie: str | None,
) -> Caller:
    """The caller of a request, from what it carried (pure: the dependency below reads the request)."""
    trusted = policy.proxies.trusts(peer)
    tls = scheme in ("https", "wss") or (trusted and (forwarded_proto or "").strip().lower() == "https")
    values = [v for v in header_values if v.strip()]
    if policy.header is not None and values:
        if not trusted:
            log.info("identity header from untrusted peer %s ignored", peer)
        elif len(values) > 1:
            raise InvalidIdentityError(f"the {policy.header} header came more than once")
        elif not ids.valid_user_name(values[0]):
            raise InvalidIdentityError(f"the {policy.header} header is not a user name")
        else:
            return Caller(owner=ids.user_owner(values[0]), kind="user", tls=tls)
    if cookie is not None and ids.is_client_token(cookie):
        return Caller(owner=ids.client_owner(cookie), kind="client", tls=tls)
    return Caller(owner=None, kind="anonymous", tls=tls)


def issue_client_cookie(response: Response, caller: Caller) -> Caller:
    """Give an anonymous browser its identity: a fresh token in the cookie; the caller it now is."""
    token = ids.new_client_token()
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        secure=caller.tls,
        httponly=True,
        samesite="strict",
    )
    return Caller(owner=ids.client_owner(token), kind="client", tls=caller.tls)
