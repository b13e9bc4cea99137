"""What the HTTP providers share: the client settings and the mapping of HTTP failures to LLM errors."""

from __future__ import annotations

import json
from typing import Any

import httpx

from autobot.llm.base import LLMError, LLMResponseError, LLMUnavailableError

_MAX_DETAIL = 300


def check_base_url(provider: str, base_url: str) -> str:
    """`base_url` without a trailing slash, refusing what httpx could not call."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{provider}: invalid base_url {base_url!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{provider}: base_url must be an http(s) URL with a host, not {base_url!r}")
    return base_url.rstrip("/")


def make_client(base_url: str, timeout_s: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment must not reroute calls inside the cluster; every address
    # comes from the service's config file.
    return httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(timeout_s), headers=headers, trust_env=False
    )


def transport_error(provider: str, url: str, exc: httpx.TransportError) -> LLMUnavailableError:
    if isinstance(exc, httpx.TimeoutException):
        return LLMUnavailableError(f"{provider}: {url} timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return LLMUnavailableError(f"{provider}: cannot connect to {url}: {exc}")
    return LLMUnavailableError(f"{provider}: connection to {url} failed: {type(exc).__name__}: {exc}")


def _error_detail(body: bytes) -> str:
    """The runtime's own error text: Ollama sends {"error": "..."}, OpenAI {"error": {"message": "..."}}."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:_MAX_DETAIL] or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error if error is not None else data)[:_MAX_DETAIL]


def status_error(provider: str, url: str, status: int, body: bytes) -> LLMError:
    message = f"{provider}: {url} answered HTTP {status}: {_error_detail(body)}"
    # 5xx and 429 are the runtime failing or overloaded, not our request being wrong.
    if status >= 500 or status == 429:
        return LLMUnavailableError(message)
    return LLMError(message)


def parse_object(provider: str, url: str, payload: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError as exc:
        preview = payload[:80] if isinstance(payload, str) else payload[:80].decode("utf-8", "replace")
        raise LLMResponseError(f"{provider}: {url} answered malformed JSON ({exc}): {preview!r}") from None
    if not isinstance(data, dict):
        raise LLMResponseError(f"{provider}: {url} answered JSON {type(data).__name__}, expected an object")
    return data


def optional_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if type(value) is int else None
