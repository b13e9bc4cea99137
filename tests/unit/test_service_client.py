"""ServiceClient pieces that need no server: query encoding and argument checks."""

from __future__ import annotations

import pytest

from autobot.client.service_client import IDEMPOTENT_METHODS, ServiceClient, encode_query
from autobot.security.keyring import Keyring


def test_query_is_encoded_rfc3986_style_once() -> None:
    assert encode_query(None) == ""
    assert encode_query({"a": "x y", "b": "1+1=2", "c": "/?&#%"}) == "a=x%20y&b=1%2B1%3D2&c=%2F%3F%26%23%25"
    assert encode_query({"l": ["1", 2], "u": "é"}) == "l=1&l=2&u=%C3%A9"
    assert encode_query({"t": "~-._"}) == "t=~-._"


def test_only_idempotent_methods_are_retried() -> None:
    assert {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} == IDEMPOTENT_METHODS
    assert "POST" not in IDEMPOTENT_METHODS
    assert "PATCH" not in IDEMPOTENT_METHODS


def test_keyring_must_belong_to_the_caller() -> None:
    keyring = Keyring(service_id="ai-stack", masters={1: bytes(32)})
    with pytest.raises(ValueError, match="belongs to 'ai-stack'"):
        ServiceClient("main-backend", keyring, {})
    with pytest.raises(ValueError, match="retries"):
        ServiceClient("ai-stack", keyring, {}, retries=-1)
