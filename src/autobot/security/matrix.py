"""The authorization matrix of one callee, read from the service matrix (`autobot_services` in group_vars).

Semantics (docs/architecture.md, "The service matrix"): default deny; a route is reachable without a signature
only if the callee declares it public; otherwise the caller needs a grant of {methods, path}. In a path
pattern `*` matches exactly one non-empty segment and `**` the rest (zero or more segments, last position
only). Methods are exact and upper-case, so HEAD is not GET. Unknown callees and callers are denied
everything.

A grant may name `max_body_bytes`: the most body bytes the service-auth middleware reads for it (the
middleware's default otherwise). Public routes take none: their body limit is the app's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autobot.security.keys import is_service_id

MATRIX_TOP_KEY = "autobot_services"
_METHOD = re.compile(r"[A-Z]{1,20}")
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=:@%]+")
_ROUTE_KEYS = frozenset({"methods", "path"})
_GRANT_KEYS = _ROUTE_KEYS | {"max_body_bytes"}
# A per-route body limit above this is a typo, not a plan (the middleware buffers the body to verify it).
MAX_ROUTE_BODY_BYTES = 1024 * 1024 * 1024


class MatrixError(ValueError):
    """The matrix data is malformed; the message names the service and the offending entry."""


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str]
    pattern: tuple[str, ...]
    max_body_bytes: int | None = None  # grants only; None = the middleware's default

    def matches(self, method: str, segments: tuple[str, ...]) -> bool:
        return method in self.methods and _match(self.pattern, segments)

    @property
    def path(self) -> str:
        """The pattern as the matrix writes it ('/api/sessions/*')."""
        return "/" + "/".join(self.pattern)


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    for index, part in enumerate(pattern):
        if part == "**":
            return True
        if index >= len(segments):
            return False
        segment = segments[index]
        if part == "*":
            if not segment:
                return False
        elif part != segment:
            return False
    return len(segments) == len(pattern)


def split_path(path: str) -> tuple[str, ...]:
    """'/a/b' -> ('a', 'b'); '/' -> ('',): a trailing slash is an empty last segment, matched only by `**`."""
    return tuple(path.split("/")[1:])


def _parse_pattern(path: object, where: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise MatrixError(f"{where}: path must be a string starting with '/', not {path!r}")
    parts = split_path(path)
    if path == "/":
        return parts
    for index, part in enumerate(parts):
        if part == "**":
            if index != len(parts) - 1:
                raise MatrixError(f"{where}: '**' is allowed only as the last segment of {path!r}")
        elif part != "*" and _LITERAL_SEGMENT.fullmatch(part) is None:
            raise MatrixError(
                f"{where}: invalid segment {part!r} in {path!r} (wildcards must be whole segments)"
            )
    return parts


def _parse_body_limit(value: object, where: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_ROUTE_BODY_BYTES:
        raise MatrixError(
            f"{where}: max_body_bytes must be a whole number of bytes from 1 to {MAX_ROUTE_BODY_BYTES}, "
            f"not {value!r}"
        )
    return value


def _parse_rules(entries: object, where: str, *, grants: bool) -> tuple[Rule, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise MatrixError(f"{where}: expected a list of {{methods, path}}, not {type(entries).__name__}")
    rules = []
    for number, entry in enumerate(entries, start=1):
        here = f"{where}[{number}]"
        if not isinstance(entry, Mapping):
            raise MatrixError(f"{here}: expected a mapping with the keys 'methods' and 'path'")
        if not grants and "max_body_bytes" in entry:
            raise MatrixError(f"{here}: public routes take the app's own body limit, not max_body_bytes")
        if not _ROUTE_KEYS <= set(entry) <= (_GRANT_KEYS if grants else _ROUTE_KEYS):
            optional = " (and optionally 'max_body_bytes')" if grants else ""
            raise MatrixError(f"{here}: expected exactly the keys 'methods' and 'path'{optional}")
        methods = entry["methods"]
        if not isinstance(methods, list) or not methods:
            raise MatrixError(f"{here}: methods must be a non-empty list")
        for method in methods:
            if not isinstance(method, str) or _METHOD.fullmatch(method) is None:
                raise MatrixError(f"{here}: method {method!r} must be an upper-case HTTP method")
        limit = _parse_body_limit(entry["max_body_bytes"], here) if "max_body_bytes" in entry else None
        rules.append(Rule(frozenset(methods), _parse_pattern(entry["path"], here), limit))
    return tuple(rules)


@dataclass(frozen=True)
class Matrix:
    """Who may call `callee`, and which of its routes are public. Pure after construction."""

    callee: str
    public: tuple[Rule, ...] = ()
    grants: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def from_services(cls, data: Mapping[str, Any], callee: str) -> Matrix:
        """Build from the `autobot_services` mapping (the wrapping top-level key is accepted too)."""
        if not isinstance(data, Mapping):
            raise MatrixError(f"service matrix must be a mapping, not {type(data).__name__}")
        services = data.get(MATRIX_TOP_KEY, data)
        if not isinstance(services, Mapping):
            raise MatrixError(f"'{MATRIX_TOP_KEY}' must be a mapping of service id -> service")
        section = services.get(callee)
        if section is None:
            return cls(callee=callee)  # unknown callee: everything denied
        if not isinstance(section, Mapping):
            raise MatrixError(f"service {callee!r}: expected a mapping")
        public = _parse_rules(section.get("public"), f"{callee}.public", grants=False)
        callers = section.get("callers") or {}
        if not isinstance(callers, Mapping):
            raise MatrixError(f"{callee}.callers: expected a mapping of caller id -> rules")
        grants: dict[str, tuple[Rule, ...]] = {}
        for caller, entries in callers.items():
            if not isinstance(caller, str) or not is_service_id(caller):
                raise MatrixError(f"{callee}.callers: invalid caller id {caller!r}")
            if caller not in services:
                raise MatrixError(f"{callee}.callers: caller {caller!r} is not a service of the matrix")
            grants[caller] = _parse_rules(entries, f"{callee}.callers.{caller}", grants=True)
        return cls(callee=callee, public=public, grants=grants)

    @classmethod
    def load(cls, path: Path | str, callee: str) -> Matrix:
        return cls.load_all(path, only=callee)[callee]

    @classmethod
    def load_all(cls, path: Path | str, *, only: str | None = None) -> dict[str, Matrix]:
        """callee -> Matrix for every service of the matrix file (or only `only`, known or not)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MatrixError(f"cannot read matrix file {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise MatrixError(f"matrix file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping) or MATRIX_TOP_KEY not in data:
            raise MatrixError(f"matrix file {path} has no top-level '{MATRIX_TOP_KEY}' key")
        services = data[MATRIX_TOP_KEY]
        callees = [only] if only is not None else list(services if isinstance(services, Mapping) else ())
        try:
            return {callee: cls.from_services(services, callee) for callee in callees}
        except MatrixError as exc:
            raise MatrixError(f"matrix file {path}: {exc}") from exc

    @property
    def callers(self) -> frozenset[str]:
        return frozenset(self.grants)

    def route_of(self, method: str, path: str) -> str | None:
        """The pattern of the first public route or grant (any caller's) that `method path` falls under."""
        segments = split_path(path)
        for rule in (*self.public, *(rule for rules in self.grants.values() for rule in rules)):
            if rule.matches(method, segments):
                return rule.path
        return None

    def is_public(self, method: str, path: str) -> bool:
        segments = split_path(path)
        return any(rule.matches(method, segments) for rule in self.public)

    def allows(self, caller: str, method: str, path: str) -> bool:
        rules = self.grants.get(caller, ())
        segments = split_path(path)
        return any(rule.matches(method, segments) for rule in rules)

    def granted_body_limit(self, caller: str, method: str, path: str, default: int) -> int | None:
        """None when no grant of `caller` matches; else the most body bytes the request may carry: the
        largest limit among the matching grants, a grant without `max_body_bytes` counting as `default`."""
        segments = split_path(path)
        limit: int | None = None
        for rule in self.grants.get(caller, ()):
            if rule.matches(method, segments):
                own = default if rule.max_body_bytes is None else rule.max_body_bytes
                limit = own if limit is None else max(limit, own)
        return limit
