"""Canonical request: the RFC 9421 signature base, Content-Digest (RFC 9530) and path safety, all pure."""

from __future__ import annotations

import base64

import pytest

from autobot.security.canonical import (
    CanonicalError,
    content_digest,
    request_components,
    serialize_signature_params,
    signature_base,
)
from autobot.security.keys import KeyId
from autobot.security.paths import path_problem
from autobot.security.signing import compute_mac, mac_matches, sign_request

# RFC 9421 Appendix B.1.5 and B.2.5.
RFC_SHARED_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_B25_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
)
RFC_B25_SIGNATURE = "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="


def test_rfc9421_b25_signature_base_and_value_are_reproduced() -> None:
    params = serialize_signature_params(
        ["date", "@authority", "content-type"], [("created", 1618884473), ("keyid", "test-shared-secret")]
    )
    base = signature_base(
        [
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("@authority", "example.com"),
            ("content-type", "application/json"),
        ],
        params,
    )
    assert base.decode() == RFC_B25_BASE
    assert base64.b64encode(compute_mac(RFC_SHARED_SECRET, base)).decode() == RFC_B25_SIGNATURE
    assert mac_matches(RFC_SHARED_SECRET, base, base64.b64decode(RFC_B25_SIGNATURE))
    assert not mac_matches(RFC_SHARED_SECRET, base + b" ", base64.b64decode(RFC_B25_SIGNATURE))


def test_content_digest_matches_rfc9530_form() -> None:
    # RFC 9530 section 2 example body {"hello": "world"} with sha-256.
    assert content_digest(b'{"hello": "world"}') == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


def test_our_signature_base_covers_raw_target_bytes() -> None:
    components = request_components(
        method="POST",
        raw_path=b"/api/a%20b",
        query_string=b"x=1&y=a+b",
        content_digest="sha-256=:AA==:",
        service_id="main-backend",
    )
    assert components[:3] == [("@method", "POST"), ("@path", "/api/a%20b"), ("@query", "?x=1&y=a+b")]
    empty = request_components(
        method="GET", raw_path=b"", query_string=b"", content_digest="d", service_id="main-backend"
    )
    assert empty[1:3] == [("@path", "/"), ("@query", "?")]


def test_signed_headers_have_the_wire_format() -> None:
    headers = sign_request(
        key=bytes(32),
        key_id=KeyId("main-backend", 3),
        method="POST",
        raw_path=b"/api/process",
        query_string=b"",
        body=b"{}",
        created=1700000000,
        nonce="abcdefghijklmnopqrstuv",
    ).as_dict()
    assert headers["X-Service-ID"] == "main-backend"
    assert headers["Content-Digest"] == content_digest(b"{}")
    assert headers["Signature-Input"] == (
        'autobot=("@method" "@path" "@query" "content-digest" "x-service-id");created=1700000000;'
        'nonce="abcdefghijklmnopqrstuv";keyid="main-backend:v3";alg="hmac-sha256"'
    )
    assert headers["Signature"].startswith("autobot=:")
    assert headers["Signature"].endswith("=:")


@pytest.mark.parametrize("value", ["a\nb", "é", "tab\there", "\x00"])
def test_unsignable_component_values_are_refused(value: str) -> None:
    with pytest.raises(CanonicalError):
        signature_base([("x-service-id", value)], "()")


@pytest.mark.parametrize(
    "path",
    [
        b"/api/../etc",
        b"/api/..",
        b"/api/./x",
        b"//api",
        b"/api//x",
        b"/api/%2F",
        b"/api/%2f",
        b"/api/%5C",
        b"/api/%5c",
        b"/api/%2E%2E/x",
        b"/api/%2e",
        b"/api/%00",
        b"/api/\x00",
        b"/api/\\x",
        b"/api/a b",
        b"/api/\xc3\xa9",
        b"/api/%zz",
        b"/api/%4",
        b"/api/%",
        b"api/x",
        b"",
        b"*",
    ],
)
def test_unsafe_paths_are_refused(path: bytes) -> None:
    assert path_problem(path, b"") is not None


@pytest.mark.parametrize("query", [b"a=\x00", b"a=b c", b"a=\xc3\xa9", b"a#b", b"a=\n", b"a=%00"])
def test_unsafe_queries_are_refused(query: bytes) -> None:
    assert path_problem(b"/api/x", query) is not None


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (b"/", b""),
        (b"/api/sessions/s-1/files", b""),
        (b"/api/a%20b/%41", b"q=%2F%2e&x=a+b"),
        (b"/api/a.b/..c/.d", b"x=.."),
        (b"/api/~user:1@x", b"x=%2F%5C%2E"),
    ],
)
def test_safe_targets_pass(path: bytes, query: bytes) -> None:
    assert path_problem(path, query) is None
