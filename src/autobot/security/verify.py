"""Verification of one request, from the raw bytes received; the one function both middlewares use.

Order (DESIGN.md section 4): path safety -> public route? -> headers present and well-formed -> caller known
and keyid belongs to it -> algorithm -> `created` within +-skew -> digest matches body -> HMAC (constant
time) -> nonce unseen (Redis, only after the MAC verified) -> matrix grant. Failures up to the nonce are 401,
the matrix is 403, an unreachable replay store is 503 (fail closed).

Unsafe paths are refused with 401 on every route, public ones included: the path check runs before anything
else, so no route can be reached through `..`, `//` or encoded separators.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList, Item

from autobot.security import decision as r
from autobot.security.canonical import (
    ALGORITHM,
    COVERED_COMPONENTS,
    DIGEST_ALGORITHM,
    SIGNATURE_LABEL,
    CanonicalError,
    request_components,
    signature_base,
)
from autobot.security.decision import Decision, RouteKind
from autobot.security.keyring import Keyring
from autobot.security.keys import KeyFormatError, KeyId, is_service_id
from autobot.security.matrix import Matrix
from autobot.security.paths import path_problem
from autobot.security.replay import NonceChecker, ReplayStoreUnavailable
from autobot.security.signing import mac_matches

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PARAMS = frozenset({"created", "nonce", "keyid", "alg"})
_WANTED_HEADERS = (b"x-service-id", b"content-digest", b"signature-input", b"signature")
_MAX_HEADER_BYTES = 4096
_HASH_BYTES = 32


@dataclass(frozen=True)
class RawRequest:
    """A request as received: ASGI `raw_path` and `query_string`, raw header pairs and the whole body."""

    method: str
    raw_path: bytes
    query_string: bytes = b""
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class VerifyContext:
    callee: str
    keyring: Keyring
    matrix: Matrix
    nonces: NonceChecker
    algorithm: str = ALGORITHM
    clock_skew_s: int = 300

    def route_kind(self, method: str, raw_path: bytes) -> RouteKind:
        return "public" if self.matrix.is_public(method, raw_path.decode("latin-1")) else "service"

    def needs_body(self, method: str, raw_path: bytes, query_string: bytes) -> bool:
        """Whether verifying this request reads the body (safe service routes only; public ones never do)."""
        return path_problem(raw_path, query_string) is None and self.route_kind(method, raw_path) == "service"


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _SignedFields:
    service_id: str
    content_digest: str
    digest: bytes
    params: InnerList
    key_id: KeyId
    created: int
    nonce: str
    alg: str
    signature: bytes


@dataclass
class _Claim:
    """Identity claimed so far, reported on refusals (set only once syntactically valid)."""

    caller: str | None = None
    keyid: str | None = None


def _collect_headers(headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _WANTED_HEADERS:
            found.setdefault(lowered, []).append(value)
    # Repeated field lines combine with ", " (RFC 9110 5.3), as a standard RFC 9421 verifier would see them.
    return {name: b", ".join(v.strip(b" \t") for v in values) for name, values in found.items()}


def _header_text(headers: dict[bytes, bytes], name: bytes) -> str:
    value = headers.get(name)
    if value is None:
        raise _Refused(401, f"{r.MISSING_HEADER}:{name.decode()}")
    if len(value) > _MAX_HEADER_BYTES or not value:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:{name.decode()}")
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:{name.decode()}") from None


def _parse_dictionary(text: str, name: str) -> Dictionary:
    parsed = Dictionary()
    try:
        parsed.parse(text.encode("ascii"))
    except Exception:  # http_sfv raises several types on hostile input; all mean "malformed"
        raise _Refused(401, f"{r.MALFORMED_HEADER}:{name}") from None
    return parsed


def _byte_member(dictionary: Dictionary, key: str, header: str) -> bytes:
    member = dictionary.get(key)
    if not isinstance(member, Item) or type(member.value) is not bytes or member.params:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:{header}")
    if len(member.value) != _HASH_BYTES:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:{header}")
    return member.value


def _parse_signed_fields(headers: dict[bytes, bytes], claim: _Claim) -> _SignedFields:
    service_id = _header_text(headers, b"x-service-id")
    if not is_service_id(service_id):
        raise _Refused(401, f"{r.MALFORMED_HEADER}:x-service-id")
    claim.caller = service_id
    digest_text = _header_text(headers, b"content-digest")
    input_text = _header_text(headers, b"signature-input")
    signature_text = _header_text(headers, b"signature")

    digest = _byte_member(
        _parse_dictionary(digest_text, "content-digest"), DIGEST_ALGORITHM, "content-digest"
    )
    signature = _byte_member(_parse_dictionary(signature_text, "signature"), SIGNATURE_LABEL, "signature")

    inner = _parse_dictionary(input_text, "signature-input").get(SIGNATURE_LABEL)
    if not isinstance(inner, InnerList):
        raise _Refused(401, f"{r.MALFORMED_HEADER}:signature-input")
    components = []
    for item in inner:
        if type(item.value) is not str or item.params:
            raise _Refused(401, f"{r.MALFORMED_HEADER}:signature-input")
        components.append(item.value)
    if tuple(components) != COVERED_COMPONENTS or set(inner.params) != _PARAMS:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:signature-input")
    created, nonce, keyid, alg = (inner.params[p] for p in ("created", "nonce", "keyid", "alg"))
    if type(created) is not int or type(nonce) is not str or type(keyid) is not str or type(alg) is not str:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:signature-input")
    if _NONCE.fullmatch(nonce) is None:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:signature-input")
    try:
        key_id = KeyId.parse(keyid)
    except KeyFormatError:
        raise _Refused(401, f"{r.MALFORMED_HEADER}:signature-input") from None
    claim.keyid = str(key_id)
    return _SignedFields(
        service_id=service_id,
        content_digest=digest_text.strip(" \t"),
        digest=digest,
        params=inner,
        key_id=key_id,
        created=created,
        nonce=nonce,
        alg=alg,
        signature=signature,
    )


def _authenticate(request: RawRequest, ctx: VerifyContext, now: float, claim: _Claim) -> _SignedFields:
    """Steps 2-7, pure: returns the verified fields or raises _Refused(401, reason)."""
    fields = _parse_signed_fields(_collect_headers(request.headers), claim)
    if fields.service_id not in ctx.keyring.callers:
        raise _Refused(401, r.UNKNOWN_CALLER)
    if fields.key_id.service != fields.service_id:
        raise _Refused(401, r.KEYID_MISMATCH)
    key = ctx.keyring.verification_key(fields.key_id)
    if key is None:
        raise _Refused(401, r.UNKNOWN_KEY_VERSION)
    if fields.alg != ctx.algorithm:
        raise _Refused(401, r.BAD_ALGORITHM)
    if abs(int(now) - fields.created) > ctx.clock_skew_s:
        raise _Refused(401, r.CREATED_OUT_OF_WINDOW)
    if not hmac.compare_digest(hashlib.sha256(request.body).digest(), fields.digest):
        raise _Refused(401, r.DIGEST_MISMATCH)
    try:
        components = request_components(
            method=request.method,
            raw_path=request.raw_path,
            query_string=request.query_string,
            content_digest=fields.content_digest,
            service_id=fields.service_id,
        )
        base = signature_base(components, str(fields.params))
    except CanonicalError:
        raise _Refused(401, r.MALFORMED_HEADER) from None
    if not mac_matches(key, base, fields.signature):
        raise _Refused(401, r.BAD_SIGNATURE)
    return fields


async def verify_request(request: RawRequest, ctx: VerifyContext, *, now: float | None = None) -> Decision:
    """Decide on one request. Never raises for any input; 503 only when the replay store is unreachable."""
    now = time.time() if now is None else now
    route_kind = ctx.route_kind(request.method, request.raw_path)
    claim = _Claim()
    try:
        if path_problem(request.raw_path, request.query_string) is not None:
            raise _Refused(401, r.UNSAFE_PATH)
        if route_kind == "public":
            return Decision(200, r.PUBLIC_ROUTE, "public")
        fields = _authenticate(request, ctx, now, claim)
        try:
            fresh = await ctx.nonces.remember(ctx.callee, fields.service_id, fields.nonce)
        except ReplayStoreUnavailable:
            raise _Refused(503, r.REPLAY_STORE_UNAVAILABLE) from None
        if not fresh:
            raise _Refused(401, r.REPLAYED_NONCE)
        if not ctx.matrix.allows(fields.service_id, request.method, request.raw_path.decode("ascii")):
            raise _Refused(403, r.NOT_GRANTED)
    except _Refused as refused:
        return Decision(refused.status, refused.reason, route_kind, claim.caller, claim.keyid)
    return Decision(200, r.OK, route_kind, claim.caller, claim.keyid)
