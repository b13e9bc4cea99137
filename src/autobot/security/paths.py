"""Path safety: refuse request targets that different layers could interpret differently.

Path-prefix bypasses with `//`, `..` and encoded separators are a known vulnerability class (CVE-2021-31920),
so such targets are refused, never normalised. Checks run on the raw bytes received (ASGI `raw_path` and
`query_string`); `scope["path"]` is already percent-decoded and would hide exactly these tricks.
"""

from __future__ import annotations

import re

# RFC 3986 pchar minus the percent sign (escapes are checked separately) plus "/".
_PATH_CHARS = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# Query: any visible ASCII except "#"; its meaning belongs to the application, only bytes are checked.
_QUERY_CHARS = re.compile(rb"[\x21\x22\x24-\x7e]*")
_PERCENT = re.compile(rb"%(?P<hex>.{0,2})", re.DOTALL)
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
# Encoded "/", "\", "." and NUL: each would turn into a separator, a dot segment or a terminator once decoded.
_FORBIDDEN_ESCAPES = frozenset({b"2f", b"5c", b"2e", b"00"})


def path_problem(raw_path: bytes, query_string: bytes = b"") -> str | None:
    """Return why the target is unsafe, or None when it is safe. Pure."""
    return raw_path_problem(raw_path) or query_problem(query_string)


def raw_path_problem(raw_path: bytes) -> str | None:
    """`path_problem` of the path alone."""
    if not raw_path.startswith(b"/"):
        return "path must start with '/'"
    if _PATH_CHARS.fullmatch(raw_path) is None:
        return "path holds a character outside RFC 3986 (control, space, backslash, NUL or non-ASCII)"
    if b"//" in raw_path:
        return "empty path segment ('//')"
    for match in _PERCENT.finditer(raw_path):
        escape = match["hex"]
        if _HEX2.fullmatch(escape) is None:
            return "malformed percent escape"
        if escape.lower() in _FORBIDDEN_ESCAPES:
            return "encoded '/', '\\', '.' or NUL in path"
    for segment in raw_path.split(b"/"):
        if segment in (b".", b".."):
            return "dot segment in path"
    return None


def query_problem(query_string: bytes) -> str | None:
    """`path_problem` of the query alone."""
    if _QUERY_CHARS.fullmatch(query_string) is None:
        return "query holds a control, space, '#' or non-ASCII byte"
    if b"%00" in query_string:  # an encoded NUL is never a legitimate parameter value between services
        return "encoded NUL in query"
    return None


def is_safe_target(raw_path: bytes, query_string: bytes = b"") -> bool:
    return path_problem(raw_path, query_string) is None
