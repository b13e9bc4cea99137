"""Enforcement phase of service authentication: verify, audit and refuse.

Refusals answer with a JSON error and the decision's status: 401 unauthenticated or unsafe path, 403 route not
granted, 413 body too large, 431 headers too large, 503 replay store (Redis) or key files unavailable (fail
closed). A request that does not authenticate is answered from its headers, at once, and its connection
closed, so not one byte of its body is read. The replay store gets
`security.enforcement_replay_timeout_ms` (500 ms by default) per request before the answer is 503. If the
auth components cannot be built at start-up the service does not start.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.types import Receive, Scope, Send

from autobot.config import DEFAULT_ENFORCEMENT_REPLAY_TIMEOUT_MS, SecurityConfig
from autobot.middleware.service_auth_core import ServiceAuthMiddlewareBase, send_refusal
from autobot.security.audit import Phase
from autobot.security.decision import Decision


class ServiceAuthEnforcementMiddleware(ServiceAuthMiddlewareBase):
    phase: ClassVar[Phase] = "enforcement"
    fail_startup_without_auth: ClassVar[bool] = True

    @classmethod
    def replay_wait_ms(cls, security: SecurityConfig | None) -> int:
        return security.enforcement_replay_timeout_ms if security else DEFAULT_ENFORCEMENT_REPLAY_TIMEOUT_MS

    async def on_refused(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, *, stranger_body: bool
    ) -> None:
        await send_refusal(scope, receive, send, decision.status, decision.reason, close=stranger_body)
