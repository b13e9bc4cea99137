"""The verifier's shortcuts (through http_sfv, around it for our canonical shape, the base checked as one
text) give exactly what the long way gives (property tests, pure)."""

from __future__ import annotations

import base64
from typing import Any

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList
from hypothesis import given, settings
from hypothesis import strategies as st

from autobot.security.canonical import (
    COVERED_COMPONENTS,
    DIGEST_ALGORITHM,
    SIGNATURE_LABEL,
    CanonicalError,
    ParamValue,
    serialize_signature_params,
    signature_base,
    signature_params_list,
)
from autobot.security.keys import KeyId
from autobot.security.signing import new_nonce, sign_request
from autobot.security.verify import (
    _DIGEST_FAST,
    _SIGNATURE_FAST,
    _SIGNATURE_INPUT_FAST,
    _byte_member,
    _byte_member_value,
    _parse_dictionary,
    _parse_signature_input,
    _parsed_signature_input_fields,
    _Refused,
    _signature_input_fields,
)

PARAM_NAMES = st.one_of(
    st.sampled_from(["created", "nonce", "keyid", "alg", "expires", "tag"]),
    st.text("abcxyz019_-.*", min_size=1, max_size=6),
    st.sampled_from(["Created", "9x", ""]),  # not sf keys
)
PARAM_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(10**16), max_value=10**16),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24),
    st.text(max_size=4),  # non-ASCII: not an sf-string
    st.booleans(),
)
COMPONENT_LISTS = st.one_of(
    st.just(list(COVERED_COMPONENTS)),
    st.lists(st.sampled_from(["@method", "@path", "@query", "content-digest", "date"]), max_size=5),
)


def _http_sfv_or_error(thunk: Any) -> tuple[str, Any]:
    try:
        return "ok", thunk()
    except Exception as exc:
        return "error", type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(
    components=COMPONENT_LISTS,
    params=st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES), max_size=5, unique_by=lambda p: p[0]),
)
def test_signature_params_serialize_exactly_as_http_sfv(
    components: list[str], params: list[tuple[str, ParamValue]]
) -> None:
    expected = _http_sfv_or_error(lambda: str(signature_params_list(components, params)))
    ours = _http_sfv_or_error(lambda: serialize_signature_params(components, params))
    if expected[0] == "ok":
        assert ours == expected
    else:
        assert ours[0] == "error"


HEAD = 'autobot=("@method" "@path" "@query" "content-digest" "x-service-id")'
PARAM_TEXT = st.one_of(
    st.builds(lambda v: f";created={v}", st.integers(min_value=-(10**16), max_value=10**16)),
    st.builds(
        lambda v: f';nonce="{v}"', st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
    ),
    st.sampled_from(
        [
            ';keyid="main-backend:v1"',
            ';alg="hmac-sha256"',
            ";flag",
            ";flag=?0",
            ";d=1.5",
            ";t=tok",
            ";b=:AAAA:",
        ]
    ),
    st.sampled_from(
        ["; created=1", ";Created=1", ";=1", ";", " ", ", other=(x)", ', other=("a")', "\t", "!"]
    ),
)


def _expected(text: str) -> Any:
    """What the whole value parsed by http_sfv says: refused, or (components, params with types)."""
    parsed = Dictionary()
    try:
        parsed.parse(text.encode("ascii"))
    except Exception:
        return "refused"
    member = parsed.get("autobot")
    if not isinstance(member, InnerList):
        return "refused"
    if any(type(item.value) is not str or item.params for item in member):
        return "refused"
    return tuple(item.value for item in member), _typed(member.params)


def _typed(params: Any) -> list[tuple[str, Any, type]]:
    return [(k, v, type(v)) for k, v in params.items()]


@settings(max_examples=1000, deadline=None)
@given(
    head=st.one_of(
        st.just(HEAD), st.sampled_from([HEAD.replace(" ", "  ", 1), "autobot=(", 'other=("x"), ' + HEAD])
    ),
    params=st.lists(PARAM_TEXT, max_size=6),
)
def test_signature_input_shortcut_parses_exactly_as_http_sfv(head: str, params: list[str]) -> None:
    text = head + "".join(params)
    try:
        components, parsed = _parse_signature_input(text)
        ours: Any = (components, _typed(parsed))
    except _Refused:
        ours = "refused"
    assert ours == _expected(text), text


def _refused_or(thunk: Any) -> Any:
    try:
        return thunk()
    except _Refused as refused:
        return ("refused", refused.reason)


BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
NEAR_BASE64 = st.text(BASE64 + "=: ,;-_.\t", min_size=40, max_size=48)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MEMBER_LABELS = st.sampled_from(["autobot", "sha-256"])
# A member as our signer writes it, with an arbitrary 32-byte value (what the shortcut must get right) ...
CANONICAL_MEMBER = st.tuples(
    st.just(""), MEMBER_LABELS, st.binary(min_size=32, max_size=32).map(lambda b: f":{_b64(b)}:"), st.just("")
)
# ... and near misses, which must fall through to http_sfv and end the same way.
OTHER_MEMBER = st.tuples(
    st.sampled_from(["", " ", "x=1, "]),
    st.sampled_from(["autobot", "sha-256", "other"]),
    st.one_of(
        st.binary(min_size=31, max_size=33).map(lambda b: f":{_b64(b)}:"),
        NEAR_BASE64.map(lambda t: ":" + t + ":"),
        st.builds(
            lambda b, last: f":{_b64(b)[:42]}{last}=:",
            st.binary(min_size=32, max_size=32),
            st.sampled_from(BASE64),  # any last character, canonical or not
        ),
    ),
    st.sampled_from(["", ";p=1", ", other=:AAAA:", " ", "\t"]),
)


@settings(max_examples=600, deadline=None)
@given(member=st.one_of(CANONICAL_MEMBER, OTHER_MEMBER))
def test_byte_member_shortcut_parses_exactly_as_http_sfv(member: tuple[str, str, str, str]) -> None:
    """Signature and Content-Digest: the regex shortcut gives what http_sfv's Dictionary parse gives."""
    prefix, label, value, suffix = member
    data = (prefix + label + "=" + value + suffix).encode()
    for fast, key, header in (
        (_SIGNATURE_FAST, SIGNATURE_LABEL, "signature"),
        (_DIGEST_FAST, DIGEST_ALGORITHM, "content-digest"),
    ):
        ours = _refused_or(lambda: _byte_member_value(data, fast, key, header))  # noqa: B023
        reference = _refused_or(
            lambda: _byte_member(_parse_dictionary(data.decode(), header), key, header)  # noqa: B023
        )
        assert ours == reference, data


SF_PLAIN = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=30
)
PARAM_ORDER = ["created", "nonce", "keyid", "alg"]
# The shape our signer sends, with arbitrary values (what the shortcut must get right) ...
CANONICAL_INPUT = st.fixed_dictionaries(
    {
        "created": st.integers(min_value=0, max_value=10**15 - 1).map(str),
        "nonce": st.text("abcXYZ019_-", min_size=16, max_size=128),
        "keyid": st.from_regex(r"[a-z][a-z0-9-]{0,20}:v[1-9][0-9]{0,3}", fullmatch=True),
        "alg": st.one_of(st.just("hmac-sha256"), st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True)),
        "order": st.just(PARAM_ORDER),
        "tail": st.just(""),
    }
)
# ... and near misses, which must fall through to http_sfv and end the same way.
OTHER_INPUT = st.fixed_dictionaries(
    {
        "created": st.one_of(
            st.integers(min_value=0, max_value=10**15 - 1).map(str),
            st.sampled_from(["01", "-5", "00", "1.5", "9999999999999999", ""]),
        ),
        "nonce": st.one_of(st.text("abcXYZ019_-", min_size=14, max_size=130), SF_PLAIN),
        "keyid": st.one_of(st.sampled_from(["main-backend:v1", "ai-stack:v12", "x:v0"]), SF_PLAIN),
        "alg": st.one_of(st.just("hmac-sha256"), SF_PLAIN),
        "order": st.permutations(PARAM_ORDER),
        "tail": st.sampled_from(["", ";extra=1", " ", ", other=()"]),
    }
)


@settings(max_examples=1000, deadline=None)
@given(case=st.one_of(CANONICAL_INPUT, OTHER_INPUT))
def test_signature_input_shortcut_gives_what_http_sfv_gives(case: dict[str, Any]) -> None:
    """The whole-value regex for our canonical Signature-Input gives the same four parameters and the same
    `@signature-params` value as parsing with http_sfv and serializing again."""
    values = {
        "created": case["created"],
        "nonce": f'"{case["nonce"]}"',
        "keyid": f'"{case["keyid"]}"',
        "alg": f'"{case["alg"]}"',
    }
    text = HEAD + "".join(f";{name}={values[name]}" for name in case["order"]) + case["tail"]
    ours = _refused_or(lambda: _signature_input_fields(text.encode()))
    reference = _refused_or(lambda: _parsed_signature_input_fields(text))
    assert ours == reference, text


def test_what_our_signer_sends_takes_the_shortcuts() -> None:
    key_id = KeyId("main-backend", 1)
    headers = sign_request(
        key=bytes(32),
        key_id=key_id,
        method="POST",
        raw_path=b"/api/process",
        query_string=b"",
        body=b"{}",
        created=1_700_000_000,
        nonce=new_nonce(),
    )
    assert _SIGNATURE_FAST.fullmatch(headers.signature.encode())
    assert _DIGEST_FAST.fullmatch(headers.content_digest.encode())
    assert _SIGNATURE_INPUT_FAST.fullmatch(headers.signature_input.encode())


@settings(max_examples=500, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)), st.text(max_size=5)),
        min_size=5,
        max_size=5,
    ),
    params=st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)), st.text(max_size=5)),
)
def test_signature_base_refuses_exactly_the_values_that_cannot_be_signed(
    values: list[str], params: str
) -> None:
    """The base is checked as one text: it must refuse exactly when some value is not printable ASCII
    (a newline in a value would add a line of its own)."""
    components = list(zip(COVERED_COMPONENTS, values, strict=True))
    signable = all(v.isascii() and v.isprintable() for v in [*values, params])
    try:
        base = signature_base(components, params)
    except CanonicalError:
        assert not signable
    else:
        assert signable
        assert base.decode().split("\n") == [f'"{n}": {v}' for n, v in components] + [
            f'"@signature-params": {params}'
        ]
