"""Enforcement phase of service authentication: verify, audit and refuse.

Refusals answer with a JSON error and the decision's status: 401 unauthenticated or unsafe path, 403 route not
granted, 413 body too large, 503 replay store (Redis) or key files unavailable (fail closed). If the auth
components cannot be built at start-up the service does not start.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.types import Receive, Scope, Send

from autobot.middleware.service_auth_core import ServiceAuthMiddlewareBase, send_refusal
from autobot.security.audit import Phase
from autobot.security.decision import Decision


class ServiceAuthEnforcementMiddleware(ServiceAuthMiddlewareBase):
    phase: ClassVar[Phase] = "enforcement"
    fail_startup_without_auth: ClassVar[bool] = True

    async def on_refused(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        await send_refusal(scope, receive, send, decision.status, decision.reason)
