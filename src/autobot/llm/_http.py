"""What the HTTP providers share: the client settings, the mapping of HTTP failures to LLM errors, and
`ChatEndpoint`, the JSON POST (whole or streamed) both runtimes' chat APIs are called with."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
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


class ChatEndpoint:
    """One runtime's chat URL: POSTs a JSON body and raises every transport or HTTP failure as an LLM error
    naming the provider and the URL. The wire format of the answer is left to the provider."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        path: str,
        *,
        timeout_s: float,
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        self.path = path
        self.url = base_url + path
        # Sent per request rather than set on the client, so an injected client is left as it was given.
        self._headers = dict(headers) if headers else None
        # An injected client belongs to whoever made it; only our own is closed by aclose().
        self._owns_client = client is None
        self._client = client or make_client(base_url, timeout_s)

    async def post_json(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to `body`, parsed as a JSON object."""
        try:
            response = await self._client.post(self.path, json=body, headers=self._headers)
        except httpx.TransportError as exc:
            raise transport_error(self.provider, self.url, exc) from exc
        if response.status_code >= 400:
            raise status_error(self.provider, self.url, response.status_code, response.content)
        return parse_object(self.provider, self.url, response.content)

    @contextlib.asynccontextmanager
    async def stream_lines(self, body: Mapping[str, Any]) -> AsyncIterator[AsyncIterator[str]]:
        """The answer to `body` as text lines, while the block runs; the response is closed when it ends.

        A context manager, not a generator: a provider returning early (on its end-of-stream marker) must
        release the connection at once, not whenever a half-read generator is collected.
        """
        try:
            async with self._client.stream("POST", self.path, json=body, headers=self._headers) as response:
                if response.status_code >= 400:
                    raise status_error(self.provider, self.url, response.status_code, await response.aread())
                yield response.aiter_lines()
        except httpx.TransportError as exc:
            raise transport_error(self.provider, self.url, exc) from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
