"""Logging phase of service authentication (deployed first): verify and audit every request, refuse none.

Every decision is written to the audit log with phase=logging so the rollout gate can list the caller/route
pairs enforcement would refuse. The request always reaches the app, even when Redis or the key files are
unavailable; the app can read the decision from scope["autobot.service_auth"] but must not rely on it.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.types import Receive, Scope, Send

from autobot.middleware.service_auth_core import ServiceAuthMiddlewareBase
from autobot.security.audit import Phase
from autobot.security.decision import Decision


class ServiceAuthLoggingMiddleware(ServiceAuthMiddlewareBase):
    phase: ClassVar[Phase] = "logging"
    fail_startup_without_auth: ClassVar[bool] = False

    async def on_refused(self, scope: Scope, receive: Receive, send: Send, decision: Decision) -> None:
        await self.app(scope, receive, send)
