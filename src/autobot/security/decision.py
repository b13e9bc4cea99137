"""The outcome of verifying one request: what both middlewares act on and what the audit log records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RouteKind = Literal["public", "service"]

# Reason codes (the part before ':' is stable, operators and the rollout gate group by it).
OK = "ok"
PUBLIC_ROUTE = "public_route"
UNSAFE_PATH = "unsafe_path"
MISSING_HEADER = "missing_header"
MALFORMED_HEADER = "malformed_header"
UNKNOWN_CALLER = "unknown_caller"
KEYID_MISMATCH = "keyid_mismatch"
UNKNOWN_KEY_VERSION = "unknown_key_version"
BAD_ALGORITHM = "bad_algorithm"
CREATED_OUT_OF_WINDOW = "created_out_of_window"
DIGEST_MISMATCH = "digest_mismatch"
BAD_SIGNATURE = "bad_signature"
REPLAYED_NONCE = "replayed_nonce"
NOT_GRANTED = "not_granted"
REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"
BODY_TOO_LARGE = "body_too_large"
HEADERS_TOO_LARGE = "headers_too_large"
AUTH_UNAVAILABLE = "auth_unavailable"


@dataclass(frozen=True)
class Decision:
    """status: 200 allowed, 401 not authenticated (or unsafe path), 403 not granted, 413 body over the route's
    limit, 431 headers too large, 503 replay store (or the auth components) unavailable.

    `caller` and `keyid` are the *claimed* identity until status is 200 (kept so the audit log and the rollout
    gate can list which caller/route pairs would be refused); they are only set when syntactically valid.
    """

    status: int
    reason: str
    route_kind: RouteKind
    caller: str | None = None
    keyid: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def label(self) -> Literal["allow", "deny", "public"]:
        if not self.allowed:
            return "deny"
        return "public" if self.route_kind == "public" else "allow"
