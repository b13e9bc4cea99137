"""Verification of one request, from the raw bytes received; the one function both middlewares use.

Two steps, so that nothing a stranger sends costs more than its headers (docs/architecture.md,
"Verification"):

- `verify_head`, pure, from the request line and headers alone: path safety -> public route? -> header
  sizes -> headers present and well-formed -> caller known and keyid belongs to it -> algorithm -> `created`
  within +-skew -> HMAC (constant time; the signature covers the Content-Digest *header*, so it needs no body)
  -> the matrix grants the route (which also gives the route's body limit).
- `verify_body`, once the body is read (at most that limit): size -> digest matches the body -> nonce unseen
  (Redis; only now, so neither strangers nor bodies that fail their digest reach the store).

`verify_request` runs both on a request whose body is already at hand. Failures are 401 (unsafe path or not
authenticated), 403 (not granted), 413 (body over the route's limit), 431 (headers too large), 503 (the
replay store cannot answer in time: fail closed).

Unsafe paths are refused with 401 on every route, public ones included: the path check runs before anything
else, so no route can be reached through `..`, `//` or encoded separators.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList, Item, Parameters

from autobot.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES
from autobot.security import decision as reasons
from autobot.security.canonical import (
    ALGORITHM,
    COVERED_COMPONENTS,
    DIGEST_ALGORITHM,
    SIGNATURE_LABEL,
    CanonicalError,
    ParamValue,
    request_components,
    serialize_signature_params,
    signature_base,
)
from autobot.security.decision import Decision, RouteKind
from autobot.security.keyring import Keyring
from autobot.security.keys import KeyFormatError, KeyId, is_service_id
from autobot.security.matrix import Matrix
from autobot.security.paths import query_problem, raw_path_problem
from autobot.security.replay import NonceChecker, ReplayStoreUnavailable
from autobot.security.signing import mac_matches

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PARAMS = frozenset({"created", "nonce", "keyid", "alg"})
_WANTED_HEADERS = (b"x-service-id", b"content-digest", b"signature-input", b"signature")
# One signature header (its field lines combined): ours are under 300 bytes; anything this long is not one.
_MAX_SIGNATURE_HEADER_BYTES = 1024
_HASH_BYTES = 32
# Targets remembered per context (see VerifyContext.classify), and the longest path worth remembering.
_MAX_REMEMBERED_TARGETS = 1024
_MAX_REMEMBERED_PATH = 256
# Bodies from this size on are hashed off the event loop (a thread hop costs less than hashing them).
_THREAD_DIGEST_BYTES = 256 * 1024


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
    # Body limit of a granted route whose grant names no `max_body_bytes`.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # All header lines of a service-route request together (names and values).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    # What the method and path alone say, remembered: a service sees a handful of routes again and again,
    # and both the matrix and the path rules are fixed for the life of the context.
    _targets: dict[tuple[str, bytes], Target] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def route_kind(self, method: str, raw_path: bytes) -> RouteKind:
        return "public" if self.matrix.is_public(method, raw_path.decode("latin-1")) else "service"

    def classify(self, method: str, raw_path: bytes, query_string: bytes) -> Target:
        """Route kind and path safety of a request target: computed once, used by middleware and verifier."""
        target = self._targets.get((method, raw_path))
        if target is None:
            target = Target(self.route_kind(method, raw_path), raw_path_problem(raw_path) is None)
            if len(raw_path) <= _MAX_REMEMBERED_PATH:
                if len(self._targets) >= _MAX_REMEMBERED_TARGETS:
                    self._targets.clear()  # strangers sending endless new paths only cost their own lookups
                self._targets[method, raw_path] = target
        if target.safe and query_string and query_problem(query_string) is not None:
            return Target(target.route_kind, False)
        return target


@dataclass(frozen=True, slots=True)
class Target:
    """What the target alone says: public or service route, and whether the path is safe."""

    route_kind: RouteKind
    safe: bool


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)  # private and never mutated; not frozen, because frozen init costs a microsecond
class _SignedFields:
    service_id: str
    content_digest: str
    digest: bytes
    signature_params: str  # the `@signature-params` value, serialized from what was received
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


def _collect_headers(headers: Sequence[tuple[bytes, bytes]], max_total: int) -> dict[bytes, bytes]:
    """The signature headers, each with its field lines combined; 431 when all lines together are over
    `max_total` bytes."""
    found: dict[bytes, bytes] = {}
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
        lowered = name.lower()
        if lowered in _WANTED_HEADERS:
            value = value.strip(b" \t")
            prior = found.get(lowered)
            # Repeated field lines combine with ", " (RFC 9110 5.3), as a standard RFC 9421 verifier sees.
            found[lowered] = value if prior is None else prior + b", " + value
    if total > max_total:
        raise _Refused(431, reasons.HEADERS_TOO_LARGE)
    return found


def _header_value(headers: dict[bytes, bytes], name: bytes) -> bytes:
    """The value of one signature header: present, not empty, within the size cap. (Its characters are
    checked by whatever parses it: a regex of our shape, http_sfv, or the ASCII decode before either.)"""
    value = headers.get(name)
    if value is None:
        raise _Refused(401, f"{reasons.MISSING_HEADER}:{name.decode()}")
    if not value or len(value) > _MAX_SIGNATURE_HEADER_BYTES:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:{name.decode()}")
    return value


def _ascii(value: bytes, header: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:{header}") from None


def _parse_dictionary(text: str, name: str) -> Dictionary:
    parsed = Dictionary()
    try:
        parsed.parse(text.encode("ascii"))
    except Exception:  # http_sfv raises several types on hostile input; all mean "malformed"
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:{name}") from None
    return parsed


def _byte_member(dictionary: Dictionary, key: str, header: str) -> bytes:
    member = dictionary.get(key)
    if not isinstance(member, Item) or type(member.value) is not bytes or member.params:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:{header}")
    if len(member.value) != _HASH_BYTES:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:{header}")
    return member.value


# Shortcuts through http_sfv for the one shape our signer sends. Each regex matches the whole value only in
# its canonical serialization (one member, no spaces, no parameters, padded base64 of 32 bytes, strings that
# need no escaping, an integer without a leading zero); it yields what http_sfv yields for that value, and
# any other value (a second member, spaces, other orders...) goes through http_sfv itself. The property
# tests in tests/security/test_structured_fields.py hold each shortcut equal to the http_sfv parse. Parsing
# the four signature headers with http_sfv was the largest cost of verification (about 15 us a request).
_B64_32 = r"([A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)"  # base64 of exactly 32 bytes, canonical last char
_SIGNATURE_FAST = re.compile(rf"{SIGNATURE_LABEL}=:{_B64_32}:".encode("ascii"))
_DIGEST_FAST = re.compile(rf"{DIGEST_ALGORITHM}=:{_B64_32}:".encode("ascii"))
# The constant head of every Signature-Input we accept: our label and exactly the covered components, as
# http_sfv serializes them. Built once.
_SIGNATURE_INPUT_HEAD = str(Dictionary({SIGNATURE_LABEL: InnerList(list(COVERED_COMPONENTS))})).encode(
    "ascii"
)
_LABEL_PREFIX = len(SIGNATURE_LABEL) + 1  # "autobot="
_SIGNATURE_INPUT_FAST = re.compile(
    re.escape(_SIGNATURE_INPUT_HEAD)
    + rb';created=(0|[1-9][0-9]{0,14});nonce="([A-Za-z0-9_-]{16,128})"'
    + rb';keyid="([a-z0-9:-]{1,80})";alg="([a-z0-9-]{1,32})"'
)


def _byte_member_value(data: bytes, fast: re.Pattern[bytes], key: str, header: str) -> bytes:
    """The 32-byte value of member `key` of a Dictionary header, through `fast` or http_sfv."""
    match = fast.fullmatch(data)
    if match is not None:
        return base64.standard_b64decode(match[1])
    return _byte_member(_parse_dictionary(_ascii(data, header), header), key, header)


def _parse_signature_input(text: str) -> tuple[tuple[str, ...], Mapping[str, object]]:
    """The covered components and the parameters of the `autobot` member of Signature-Input (http_sfv).

    When the value is the constant head followed by parameters only, only the parameters are parsed, with
    http_sfv's own Parameters parser: the head is compared byte for byte with http_sfv's serialization of
    the only component list accepted, so the result is what parsing the whole value would give (a property
    test holds the two equal). Anything else goes through the full Dictionary parse.
    """
    data = text.encode("ascii")
    if data.startswith(_SIGNATURE_INPUT_HEAD):
        rest = data[len(_SIGNATURE_INPUT_HEAD) :]
        params = Parameters()
        try:
            consumed = params.parse(rest)
        except Exception:  # http_sfv raises several types on hostile input; the full parse decides
            consumed = -1
        if consumed == len(rest):
            return COVERED_COMPONENTS, params
    inner = _parse_dictionary(text, "signature-input").get(SIGNATURE_LABEL)
    if not isinstance(inner, InnerList):
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input")
    components = []
    for item in inner:
        if type(item.value) is not str or item.params:
            raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input")
        components.append(item.value)
    return tuple(components), inner.params


_InputFields = tuple[int, str, str, str, str]
"""created, nonce, keyid, alg, and the `@signature-params` value to sign them with."""


def _signature_input_fields(data: bytes) -> _InputFields:
    """The four parameters of our Signature-Input member and its `@signature-params` value, refusing any
    other component list or parameter set. The canonical shape is matched whole (`_SIGNATURE_INPUT_FAST`):
    its `@signature-params` value is then the received text after the label, byte for byte what
    re-serializing the parsed parameters gives. Anything else takes `_parsed_signature_input_fields`."""
    match = _SIGNATURE_INPUT_FAST.fullmatch(data)
    if match is None:
        return _parsed_signature_input_fields(_ascii(data, "signature-input"))
    created, nonce, keyid, alg = match.groups()
    return int(created), nonce.decode(), keyid.decode(), alg.decode(), data[_LABEL_PREFIX:].decode()


def _parsed_signature_input_fields(text: str) -> _InputFields:
    """`_signature_input_fields` through http_sfv, for any value."""
    components, params = _parse_signature_input(text)
    if components != COVERED_COMPONENTS or set(params) != _PARAMS:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input")
    created, nonce, keyid, alg = (params[p] for p in ("created", "nonce", "keyid", "alg"))
    if type(created) is not int or type(nonce) is not str or type(keyid) is not str or type(alg) is not str:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input")
    if _NONCE.fullmatch(nonce) is None:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input")
    try:
        # In the order received: the signer's serialization is what it signed.
        checked: dict[str, ParamValue] = {"created": created, "nonce": nonce, "keyid": keyid, "alg": alg}
        params_text = serialize_signature_params(
            COVERED_COMPONENTS, [(name, checked[name]) for name in params]
        )
    except ValueError:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input") from None
    return created, nonce, keyid, alg, params_text


@functools.lru_cache(maxsize=256)
def _key_id(text: str) -> KeyId:
    """KeyId.parse, cached: a handful of callers and versions make every keyid seen (KeyId is immutable)."""
    return KeyId.parse(text)


def _parse_signed_fields(headers: dict[bytes, bytes], claim: _Claim) -> _SignedFields:
    service_id = _ascii(_header_value(headers, b"x-service-id"), "x-service-id")
    if not is_service_id(service_id):
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:x-service-id")
    claim.caller = service_id
    digest_value = _header_value(headers, b"content-digest")
    input_value = _header_value(headers, b"signature-input")
    signature_value = _header_value(headers, b"signature")

    digest = _byte_member_value(digest_value, _DIGEST_FAST, DIGEST_ALGORITHM, "content-digest")
    signature = _byte_member_value(signature_value, _SIGNATURE_FAST, SIGNATURE_LABEL, "signature")
    created, nonce, keyid, alg, params_text = _signature_input_fields(input_value)
    try:
        key_id = _key_id(keyid)
    except KeyFormatError:
        raise _Refused(401, f"{reasons.MALFORMED_HEADER}:signature-input") from None
    claim.keyid = str(key_id)
    return _SignedFields(
        service_id=service_id,
        content_digest=digest_value.decode(),
        digest=digest,
        signature_params=params_text,
        key_id=key_id,
        created=created,
        nonce=nonce,
        alg=alg,
        signature=signature,
    )


def _check_claims(
    request: RawRequest, ctx: VerifyContext, now: float, claim: _Claim
) -> tuple[_SignedFields, bytes]:
    """Header size, then steps 2-5, pure: the parsed fields and the caller's pair key, or _Refused."""
    fields = _parse_signed_fields(_collect_headers(request.headers, ctx.max_header_bytes), claim)
    if fields.service_id not in ctx.keyring.callers:
        raise _Refused(401, reasons.UNKNOWN_CALLER)
    if fields.key_id.service != fields.service_id:
        raise _Refused(401, reasons.KEYID_MISMATCH)
    key = ctx.keyring.verification_key(fields.key_id)
    if key is None:
        raise _Refused(401, reasons.UNKNOWN_KEY_VERSION)
    if fields.alg != ctx.algorithm:
        raise _Refused(401, reasons.BAD_ALGORITHM)
    # Not truncated to whole seconds: the window is exactly 2 x skew wide, which the nonce lifetime covers.
    if abs(now - fields.created) > ctx.clock_skew_s:
        raise _Refused(401, reasons.CREATED_OUT_OF_WINDOW)
    return fields, key


def _check_mac(request: RawRequest, fields: _SignedFields, key: bytes) -> None:
    """The HMAC over the covered components (constant time). Needs no body: `content-digest` is covered as
    the header value received, and `verify_body` then holds the body to that value."""
    try:
        components = request_components(
            method=request.method,
            raw_path=request.raw_path,
            query_string=request.query_string,
            content_digest=fields.content_digest,
            service_id=fields.service_id,
        )
        base = signature_base(components, fields.signature_params)
    except CanonicalError:
        raise _Refused(401, reasons.MALFORMED_HEADER) from None
    if not mac_matches(key, base, fields.signature):
        raise _Refused(401, reasons.BAD_SIGNATURE)


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A request whose line and headers passed every check that needs no body (path, header sizes, caller,
    key, algorithm, time, MAC, matrix grant). Left to check: its body (size, digest) and its nonce."""

    caller: str
    keyid: str
    nonce: str
    digest: bytes
    body_limit: int


def verify_head(
    request: RawRequest, ctx: VerifyContext, *, now: float, target: Target | None = None
) -> Decision | SignedHead:
    """Everything decidable from the request line and headers; `request.body` is not looked at. Pure, never
    raises. A Decision is final (a refusal, or a public route); a SignedHead still needs `verify_body`."""
    if target is None:
        target = ctx.classify(request.method, request.raw_path, request.query_string)
    route_kind = target.route_kind
    claim = _Claim()
    try:
        if not target.safe:
            raise _Refused(401, reasons.UNSAFE_PATH)
        if route_kind == "public":
            return Decision(200, reasons.PUBLIC_ROUTE, "public")
        fields, key = _check_claims(request, ctx, now, claim)
        _check_mac(request, fields, key)
        limit = ctx.matrix.granted_body_limit(
            fields.service_id, request.method, request.raw_path.decode("ascii"), ctx.max_body_bytes
        )
        if limit is None:
            raise _Refused(403, reasons.NOT_GRANTED)
    except _Refused as refused:
        return Decision(refused.status, refused.reason, route_kind, claim.caller, claim.keyid)
    return SignedHead(fields.service_id, str(fields.key_id), fields.nonce, fields.digest, limit)


async def body_sha256(body: bytes) -> bytes:
    """SHA-256 of the body; large bodies are hashed in a worker thread (hashlib releases the GIL), so a
    16 MiB upload does not stall every other request on the event loop for tens of milliseconds."""
    if len(body) < _THREAD_DIGEST_BYTES:
        return hashlib.sha256(body).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(body).digest())


async def verify_body(head: SignedHead, body: bytes, ctx: VerifyContext) -> Decision:
    """The rest of a request `verify_head` let through: body size, digest, then the nonce (Redis; the store
    bounds the wait). Never raises; 503 when the replay store cannot answer in time."""
    try:
        if len(body) > head.body_limit:
            raise _Refused(413, reasons.BODY_TOO_LARGE)
        if not hmac.compare_digest(await body_sha256(body), head.digest):
            raise _Refused(401, reasons.DIGEST_MISMATCH)
        try:
            fresh = await ctx.nonces.remember(ctx.callee, head.caller, head.nonce)
        except ReplayStoreUnavailable:
            raise _Refused(503, reasons.REPLAY_STORE_UNAVAILABLE) from None
        if not fresh:
            raise _Refused(401, reasons.REPLAYED_NONCE)
    except _Refused as refused:
        return Decision(refused.status, refused.reason, "service", head.caller, head.keyid)
    return Decision(200, reasons.OK, "service", head.caller, head.keyid)


async def verify_request(
    request: RawRequest, ctx: VerifyContext, *, now: float | None = None, target: Target | None = None
) -> Decision:
    """Decide on one request whose body is at hand: `verify_head`, then `verify_body`. Never raises.

    `target` is `ctx.classify(...)` of this request when the caller already has it.
    """
    head = verify_head(request, ctx, now=time.time() if now is None else now, target=target)
    if isinstance(head, Decision):
        return head
    return await verify_body(head, request.body, ctx)
