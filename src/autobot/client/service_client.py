"""ServiceClient: the signing HTTP client services use to call each other.

One pooled httpx.AsyncClient per target service. Every attempt is signed afresh (new `created` and nonce) over
the exact bytes httpx will send: the query string is encoded once here and the signature is computed from the
built request's `raw_path`, so signer and wire can never disagree. Idempotent methods are retried with
exponential backoff and jitter (stamina) on connection errors and 502/503/504; other methods never are.

`stream` is the same call with the response body read as it arrives. It retries only a connection that could
not be made (nothing was sent, so even a POST is safe to send again), never once the callee may have seen the
request: a streamed answer cannot be taken back, and a generation must not run twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import stamina

from autobot.config import ServiceConfig
from autobot.security.keyring import Keyring, KeyringError
from autobot.security.keys import KeyId
from autobot.security.paths import path_problem
from autobot.security.signing import SIGNING_HEADERS, new_nonce, sign_request

# A callee (`autobot serve`) closes a connection after CALLEE_KEEPALIVE_S idle; the client stops reusing one
# well before that, so it never sends on a connection the callee is closing at that very moment. With both at
# 5 s (httpx's and uvicorn's defaults) that race lost a chat turn now and then: a POST is not retried, and it
# reached the user as a 503 (ReadError from ai-stack, seen under the Molecule phases traffic).
CALLEE_KEEPALIVE_S = 5
KEEPALIVE_EXPIRY_S = 2.0

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({502, 503, 504})
# Failures where the request did not complete on the server side in a way an idempotent retry could hurt.
_RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
# Failures where no connection was made, so no byte of the request left this process.
_NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
# How a pooled connection the callee closed under a request shows (ServiceClient._send).
_CLOSED_UNDER_US: tuple[type[Exception], ...] = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
QueryParams = Mapping[str, str | int | float | Sequence[str | int | float]]


class ServiceCallError(Exception):
    """A call to another service failed; the message names target, method and path (never keys)."""


class ServiceTimeoutError(ServiceCallError):
    pass


class ServiceUnavailableError(ServiceCallError):
    """No connection could be made (after the retries allowed for the method)."""


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"status {response.status_code}")
        self.response = response


def call_error(where: str, exc: httpx.HTTPError, attempts: int, timeout: float) -> ServiceCallError:
    """The ServiceCallError for an httpx failure of the call `where` (e.g. "POST ai-stack/api/inference")."""
    if isinstance(exc, httpx.TimeoutException):
        kind = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for the response"
        return ServiceTimeoutError(f"{where}: timed out {kind} after {timeout}s ({attempts} attempt(s))")
    if isinstance(exc, _RETRYABLE_ERRORS):
        return ServiceUnavailableError(f"{where}: {type(exc).__name__} after {attempts} attempt(s): {exc}")
    return ServiceCallError(f"{where}: {type(exc).__name__}: {exc}")


def encode_query(params: QueryParams | None) -> str:
    """Encode once, RFC 3986 style (%20 for spaces, everything but unreserved characters escaped)."""
    if not params:
        return ""
    return urlencode(params, doseq=True, quote_via=quote, safe="")


class ServiceClient:
    def __init__(
        self,
        service_id: str,
        keyring: Keyring,
        peers: Mapping[str, str],
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        backoff_jitter_s: float = 0.1,
        max_connections: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keyring.service_id != service_id:
            raise ValueError(f"keyring belongs to {keyring.service_id!r}, not {service_id!r}")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        try:  # verifier-only keys (no master key) would otherwise fail on every call, as a KeyringError
            keyring.signing_key_id  # noqa: B018
        except KeyringError as exc:
            raise ValueError(str(exc)) from exc
        self.service_id = service_id
        self._keyring = keyring
        self._peers = {name: url.rstrip("/") for name, url in peers.items()}
        self._timeout = timeout
        self._retries = retries
        self._backoff = (backoff_initial_s, backoff_max_s, backoff_jitter_s)
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        self._clock = clock
        self._clients: dict[str, httpx.AsyncClient] = {}

    @property
    def signing_key_id(self) -> KeyId:
        """The key id every request of this client is signed with (loaded once, at construction)."""
        return self._keyring.signing_key_id

    @classmethod
    def from_config(cls, config: ServiceConfig, **options: Any) -> ServiceClient:
        """Keys from config.security.keys_dir, peers from config.peers; `options` as for the constructor.

        Raises ServiceCallError (naming the file, never a key) when the keys cannot be loaded."""
        if config.security is None:
            raise ServiceCallError(
                f"{config.service_id}: config has no security section (no keys to sign with)"
            )
        try:
            keyring = Keyring.load_dir(config.security.keys_dir, config.service_id)
            keyring.signing_key_id  # noqa: B018 (raises when the keys cannot sign)
        except KeyringError as exc:
            raise ServiceCallError(f"{config.service_id}: cannot load signing keys: {exc}") from exc
        return cls(config.service_id, keyring, config.peers, **options)

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    def _client(self, target: str) -> httpx.AsyncClient:
        client = self._clients.get(target)
        if client is None:
            if target not in self._peers:
                raise ServiceCallError(f"{self.service_id} has no peer URL for {target!r} (config.peers)")
            # trust_env=False: proxy variables must never reroute service traffic.
            client = httpx.AsyncClient(
                timeout=self._timeout, limits=self._limits, trust_env=False, follow_redirects=False
            )
            self._clients[target] = client
        return client

    def _url(self, target: str, path: str, query: str) -> str:
        return self._peers[target] + path + (f"?{query}" if query else "")

    def _checked_call(
        self,
        target: str,
        path: str,
        params: QueryParams | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[httpx.AsyncClient, str]:
        """(the target's pooled client, the encoded query), refusing a call that must not be sent."""
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(
                f"path must start with '/' and carry no query or fragment (use params=): {path!r}"
            )
        if headers and SIGNING_HEADERS & {name.lower() for name in headers}:
            raise ValueError("the signing headers are set by ServiceClient, not by the caller")
        client = self._client(target)
        query = encode_query(params)
        # Checked as given too: httpx would silently resolve `..` and send another path than the caller wrote.
        raw_path, _, raw_query = httpx.URL(self._url(target, path, query)).raw_path.partition(b"?")
        problem = path_problem(path.encode("utf-8"), b"") or path_problem(raw_path, raw_query)
        if problem is not None:
            raise ValueError(f"refusing to send an unsafe path {path!r}: {problem}")
        return client, query

    def _build(
        self,
        client: httpx.AsyncClient,
        target: str,
        method: str,
        path: str,
        query: str,
        json: Any,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Request:
        url = self._url(target, path, query)
        request = client.build_request(method, url, json=json, content=content, headers=headers)
        raw_path, _, raw_query = request.url.raw_path.partition(b"?")
        key_id, key = self._keyring.signing_key(target)
        signed = sign_request(
            key=key,
            key_id=key_id,
            method=method,
            raw_path=raw_path,
            query_string=raw_query,
            body=request.content,
            created=int(self._clock()),
            nonce=new_nonce(),
        )
        request.headers.update(signed.as_dict())
        return request

    @staticmethod
    async def _send(
        client: httpx.AsyncClient, build: Callable[[], httpx.Request], *, stream: bool = False
    ) -> httpx.Response:
        """Send a freshly signed request; once more, whatever the method, when the callee closed the pooled
        connection it went out on before answering.

        That failure means the callee's app never saw the request: the callee (uvicorn, `autobot serve`)
        closes only connections with no request in progress (idle past its keep-alive, or on a graceful
        restart), so a request that met such a close was never started. It is told apart from a callee that
        died while handling the request by two facts from httpcore's trace: no new connection was opened for
        this request (it reused one) and no response header came back. A failure on a fresh connection, or
        after the headers, is raised as it is: the request may have run. A callee killed (not stopped) in the
        middle of a request on a reused connection looks the same, and then the request runs twice: the
        callers' POST routes tolerate that (inference and text processing only answer; an extra browser
        session expires with its TTL), and it is rarer and less harmful than losing the user's turn.
        """
        for resend in (True, False):
            reused, answered = True, False

            async def trace(event: str, info: Mapping[str, Any]) -> None:
                nonlocal reused, answered
                if event.startswith("connection.connect_tcp."):
                    reused = False
                elif event == "http11.receive_response_headers.complete":
                    answered = True

            request = build()
            request.extensions = {**request.extensions, "trace": trace}
            try:
                return await client.send(request, stream=stream)
            except _CLOSED_UNDER_US:
                if not (resend and reused and not answered):
                    raise
        raise AssertionError("unreachable: the second send returns or raises")  # pragma: no cover

    def _retrying(self, on: tuple[type[Exception], ...], attempts: int) -> AsyncIterator[stamina.Attempt]:
        """The one retry policy of both call shapes: `attempts` tries, this client's backoff, no overall
        deadline (each try has the client's timeout)."""
        initial, maximum, jitter = self._backoff
        return stamina.retry_context(
            on=on, attempts=attempts, timeout=None, wait_initial=initial, wait_max=maximum, wait_jitter=jitter
        )

    async def request(
        self,
        target: str,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        method = method.upper()
        client, query = self._checked_call(target, path, params, headers)
        where = f"{method} {target}{path}"
        attempts = 1 + (self._retries if method in IDEMPOTENT_METHODS else 0)
        try:
            async for attempt in self._retrying((*_RETRYABLE_ERRORS, _RetryableStatus), attempts):
                with attempt:
                    response = await self._send(
                        client,
                        lambda: self._build(client, target, method, path, query, json, content, headers),
                    )
                    if response.status_code in RETRY_STATUSES and attempts > 1:
                        raise _RetryableStatus(response)
                    return response
        except _RetryableStatus as exhausted:
            return exhausted.response
        except httpx.HTTPError as exc:
            raise call_error(where, exc, attempts, self._timeout) from exc
        raise AssertionError("unreachable: stamina yields at least one attempt")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def stream(
        self,
        target: str,
        method: str,
        path: str,
        *,
        params: QueryParams | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """`async with client.stream(...) as response`: the response once its headers arrived, its body read
        by the block (`response.aiter_lines()`, ...) as the callee sends it, and closed when the block ends.

        Signed and checked exactly like `request`. Only a connection that could not be made is retried (with
        the same backoff); any later failure, while waiting for the headers or reading the body, raises the
        same ServiceCallError types as `request`, and any status, 5xx included, is the caller's to read.
        """
        method = method.upper()
        client, query = self._checked_call(target, path, params, headers)
        where = f"{method} {target}{path}"
        made = 0
        try:
            async for attempt in self._retrying(_NOT_SENT_ERRORS, 1 + self._retries):
                with attempt:
                    made = attempt.num
                    response = await self._send(
                        client,
                        lambda: self._build(client, target, method, path, query, json, content, headers),
                        stream=True,
                    )
        except httpx.HTTPError as exc:
            raise call_error(where, exc, made, self._timeout) from exc
        try:
            yield response
        except httpx.HTTPError as exc:
            # Raised by the block while reading the body: the callee stopped answering or died mid-stream.
            raise call_error(f"{where} (reading the streamed response)", exc, made, self._timeout) from exc
        finally:
            await response.aclose()

    async def get(self, target: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(target, "GET", path, **kwargs)

    async def post(self, target: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(target, "POST", path, **kwargs)

    async def put(self, target: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(target, "PUT", path, **kwargs)

    async def delete(self, target: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request(target, "DELETE", path, **kwargs)
