"""The configuration file each service reads (rendered by Ansible to /etc/autobot/<service>/config.yml).

One file per service; every host, port, path and limit the code uses comes from here. Unknown keys are
refused so a typo in a template fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Strict):
    # Used when the service binds its own port; under systemd the .socket unit holds it (autobot serve).
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    # On stop or restart, requests in flight get this long to finish (a chat stream is cut after it).
    graceful_shutdown_s: float = Field(default=10.0, gt=0)
    # The most bytes a request line and its headers may take; a longer head is refused with 431 before the
    # app (or the service-auth middleware) sees it. nginx's default is 32 KiB too.
    max_request_head_bytes: int = Field(default=32 * 1024, ge=1024)


class RedisConfig(_Strict):
    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    # A file, not the password itself, so the config can be world-readable inside /etc/autobot.
    password_file: Path | None = None
    max_connections: int = Field(default=64, ge=1)
    # How long a caller waits for a free pooled connection before the request fails with 503.
    pool_timeout_s: float = Field(default=2.0, gt=0)
    socket_timeout_s: float = Field(default=2.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    retries: int = Field(default=2, ge=0)
    client_name: str | None = None


# Service-auth limits (the `security` section); the verifier uses the same values when built without a config.
# The body a signed route may send when its grant in the service matrix names no `max_body_bytes`:
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# All header lines of a request to a service route together:
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# How long each phase waits for the replay store (Redis) before it gives up on a request:
DEFAULT_LOGGING_REPLAY_BUDGET_MS = 50
DEFAULT_ENFORCEMENT_REPLAY_TIMEOUT_MS = 500


class SecurityConfig(_Strict):
    keys_dir: Path
    matrix_file: Path
    audit_log: Path
    algorithm: Literal["hmac-sha256"] = "hmac-sha256"
    clock_skew_s: int = Field(default=300, ge=1)
    nonce_ttl_s: int = Field(default=600, ge=1)
    # Body limit of a signed route whose grant names none (a grant's own `max_body_bytes` wins).
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0)
    # All request header lines together, on service routes; more is refused (431) before anything else.
    max_header_bytes: int = Field(default=DEFAULT_MAX_HEADER_BYTES, ge=1024)
    # How long each phase waits for the replay store (Redis) before it gives up on a request: the logging
    # phase then passes the request on (audited as replay_store_unavailable), enforcement answers 503. Each
    # middleware file reads its own setting; neither switches the phase.
    logging_replay_budget_ms: int = Field(default=DEFAULT_LOGGING_REPLAY_BUDGET_MS, ge=1)
    enforcement_replay_timeout_ms: int = Field(default=DEFAULT_ENFORCEMENT_REPLAY_TIMEOUT_MS, ge=1)


class LLMConfig(_Strict):
    # ai-stack: main-backend asks the ai-stack service (signed); the others talk to a runtime directly.
    provider: Literal["ollama", "openai", "offline", "ai-stack"] = "offline"
    base_url: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    api_key_file: Path | None = None
    # Only for provider "offline" (the dev stand-in): the pause between streamed chunks, so a browser sees
    # the reply grow. Bounded like the provider's own check, so a typo fails at start-up.
    offline_chunk_delay_s: float = Field(default=0.02, ge=0, le=1.0)


# Headers that already mean something on the way in: an identity header may not reuse one of them.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "content-digest",
        "content-length",
        "content-type",
        "cookie",
        "forwarded",
        "host",
        "signature",
        "signature-input",
        "transfer-encoding",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-service-id",
    }
)
_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# A host name (RFC 1123 labels), an IP address or a network in CIDR notation.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def proxy_address(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network a trusted-proxy entry names if it is an IP address or a CIDR network; None for a host name
    (resolved when the service starts). ValueError if it is neither."""
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError:
        if "/" in entry or ":" in entry or _HOST_NAME_RE.fullmatch(entry) is None:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address, a CIDR network or a host name"
            ) from None
        return None


class IdentityConfig(_Strict):
    """Who the caller is (issue 15). By default an anonymous browser, known by main-backend's own cookie.

    `header`: a header that a login in front of nginx (basic auth, auth_request) sets to the user's name,
    honoured only on requests whose TCP peer is one of `trusted_proxies` (the machines the service matrix lets
    set it: `identity_header.set_by`). The same peers are trusted for `X-Forwarded-Proto` (TLS at nginx).
    """

    header: str | None = None
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _HEADER_NAME_RE.fullmatch(value) is None:
            raise ValueError(f"identity.header {value!r} is not an HTTP header name")
        if value.lower() in _RESERVED_HEADERS:
            raise ValueError(f"identity.header {value!r} already has a meaning; choose e.g. X-Autobot-User")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            proxy_address(entry)
        return value

    @model_validator(mode="after")
    def _header_needs_proxies(self) -> IdentityConfig:
        if self.header is not None and not self.trusted_proxies:
            raise ValueError(
                "identity.header is set but identity.trusted_proxies is empty: no request could carry it"
            )
        return self


class BackendConfig(_Strict):
    """Settings only main-backend uses."""

    database: Path
    files_dir: Path
    transcripts_dir: Path
    models_file: Path | None = None
    default_model: str | None = None
    history_ttl_s: int = Field(default=86_400, ge=1)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    # A streamed reply sends a comment line this often while the model is silent, so the proxies in between
    # (nginx's read timeout is longer than this) never take the quiet for a dead upstream.
    stream_heartbeat_s: float = Field(default=15.0, gt=0)
    identity: IdentityConfig = IdentityConfig()


class ServiceConfig(_Strict):
    service_id: Literal["main-backend", "npu-worker", "ai-stack", "browser-service"]
    listen: ListenConfig
    # The ASGI entry file that the deployment rendered; it alone decides which auth middleware runs.
    asgi_entry: Path | None = None
    redis: RedisConfig = RedisConfig()
    security: SecurityConfig | None = None
    # Base URLs of the services this one calls, e.g. {"npu-worker": "http://npu-worker:8081"}.
    peers: dict[str, str] = Field(default_factory=dict)
    llm: LLMConfig = LLMConfig()
    models_file: Path | None = None
    backend: BackendConfig | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def load_config(path: Path | str) -> ServiceConfig:
    """Read and validate a service configuration file, with an error that names the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(raw).__name__}")
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"config file {path} is invalid:\n{exc}") from exc
