"""Session ids, client tokens and owner keys: where every one of them comes from, and how they look.

Randomness comes from the operating system's CSPRNG only (`secrets`, which reads os.urandom): a session id is
the one thing that names a conversation, and the anonymous client token is the one thing that proves whose it
is, so neither may be guessable. Everything else here is a pure function of its arguments.

Owner keys are what the registry stores to say whose a session is. They are hashes: the raw cookie value is a
bearer secret and never becomes a Redis key or a file's content, and a user name never becomes a key's text.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

# 20 random bytes = 160 bits, base32 without padding: 32 characters of [a-z2-7], so an id is safe as a Redis
# key suffix and a file name, always starts with a letter or digit (validate_session_id) and is case-stable.
SESSION_ID_BYTES = 20
# The anonymous client token (the cookie's value): 32 random bytes, url-safe base64 without padding.
CLIENT_TOKEN_BYTES = 32
CLIENT_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
# Identity header values (user names a login in front of nginx sets): bounded, printable, no separators.
MAX_USER_NAME_BYTES = 256

CLIENT_OWNER_PREFIX = "c:"
USER_OWNER_PREFIX = "u:"
_OWNER_KEY_RE = re.compile(r"[cu]:[0-9a-f]{64}")


def new_session_id() -> str:
    """A fresh session id with 160 bits from the system CSPRNG."""
    return base64.b32encode(secrets.token_bytes(SESSION_ID_BYTES)).decode("ascii").lower()


def new_client_token() -> str:
    """A fresh anonymous client token (256 bits from the system CSPRNG) for the identity cookie."""
    return base64.urlsafe_b64encode(secrets.token_bytes(CLIENT_TOKEN_BYTES)).decode("ascii").rstrip("=")


def is_client_token(value: str) -> bool:
    """Whether `value` has the shape of a token this module issues (anything else is ignored, not trusted)."""
    return CLIENT_TOKEN_RE.fullmatch(value) is not None


def client_owner(token: str) -> str:
    """The owner key of an anonymous client: a hash of its token (the token itself is never stored)."""
    return CLIENT_OWNER_PREFIX + hashlib.sha256(b"autobot-client-v1\x00" + token.encode("ascii")).hexdigest()


def user_owner(name: bytes) -> str:
    """The owner key of a user named by the login in front (the identity header's raw bytes)."""
    return USER_OWNER_PREFIX + hashlib.sha256(b"autobot-user-v1\x00" + name).hexdigest()


def valid_user_name(name: bytes) -> bool:
    """A user name as a login sets it: 1 to 256 bytes, no control characters, not only spaces."""
    printable = all(b >= 0x20 and b != 0x7F for b in name)
    return 0 < len(name) <= MAX_USER_NAME_BYTES and name.strip() != b"" and printable


def is_owner_key(value: str) -> bool:
    return _OWNER_KEY_RE.fullmatch(value) is not None


def short_id(session_id: str) -> str:
    """A session id as logs show it: at most a third of it and never more than 6 characters, enough to
    correlate log lines and never enough to use the id (issue 15)."""
    return session_id[: min(6, len(session_id) // 3)] + "…"
