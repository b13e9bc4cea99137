"""Sessions that belong to someone (issue 15): ids main-backend issues, the registry of whose each one is, and
the operator's view of every stored conversation (legacy ones included).

Modules: ``ids`` (session ids, client tokens, owner keys: the CSPRNG and hashes), ``registry`` (Redis, with
a durable record per session beside the transcripts), ``stored`` (what ``autobot sessions`` lists, exports
and adopts). The HTTP side, the cookie and the trusted identity header, is in
``autobot.services.main_backend.identity``.
"""

from autobot.sessions.registry import (
    SessionAlreadyOwnedError,
    SessionInfo,
    SessionNotFoundError,
    SessionRegistry,
    SessionStoreUnavailableError,
)

__all__ = [
    "SessionAlreadyOwnedError",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionRegistry",
    "SessionStoreUnavailableError",
]
