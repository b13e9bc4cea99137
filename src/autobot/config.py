"""The configuration file each service reads (rendered by Ansible to /etc/autobot/<service>/config.yml).

One file per service; every host, port, path and limit the code uses comes from here. Unknown keys are
refused so a typo in a template fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


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


class BackendConfig(_Strict):
    """Settings only main-backend uses."""

    database: Path
    files_dir: Path
    transcripts_dir: Path
    models_file: Path | None = None
    default_model: str | None = None
    history_ttl_s: int = Field(default=86_400, ge=1)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)


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
