"""The verifier's shortcuts through http_sfv give exactly what http_sfv gives (property tests, pure)."""

from __future__ import annotations

from typing import Any

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList
from hypothesis import given, settings
from hypothesis import strategies as st

from autobot.security.canonical import (
    COVERED_COMPONENTS,
    ParamValue,
    serialize_signature_params,
    signature_params_list,
)
from autobot.security.verify import _parse_signature_input, _Refused

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
