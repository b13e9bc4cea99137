"""Logging phase of service authentication (deployed first): verify and audit every request, refuse none.

Every decision is written to the audit log with phase=logging so the rollout gate can list the caller/route
pairs enforcement would refuse. The request always reaches the app, even when Redis or the key files are
unavailable; the app can read the decision from scope["autobot.service_auth"] but must not rely on it.

It never holds a request longer than `security.logging_replay_budget_ms` (50 ms by default) for the replay
store: whatever Redis does (down, restarting, hung), the request then goes on with a
replay_store_unavailable audit line.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.types import Receive, Scope, Send

from autobot.config import DEFAULT_LOGGING_REPLAY_BUDGET_MS, SecurityConfig
from autobot.middleware.service_auth_core import ServiceAuthMiddlewareBase
from autobot.security.audit import Phase
from autobot.security.decision import Decision


class ServiceAuthLoggingMiddleware(ServiceAuthMiddlewareBase):
    phase: ClassVar[Phase] = "logging"
    fail_startup_without_auth: ClassVar[bool] = False

    @classmethod
    def replay_wait_ms(cls, security: SecurityConfig | None) -> int:
        return security.logging_replay_budget_ms if security else DEFAULT_LOGGING_REPLAY_BUDGET_MS

    async def on_refused(
        self, scope: Scope, receive: Receive, send: Send, decision: Decision, *, stranger_body: bool
    ) -> None:
        await self.app(scope, receive, send)
