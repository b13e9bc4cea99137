"""The model route: the registered models, their budgets and how much history each reads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from autobot.context import ContextWindowManager


def models_router(windows: ContextWindowManager) -> APIRouter:
    """The answer never changes while the process runs, so it is computed once here."""
    registry = windows.registry
    models = [
        {
            "name": spec.name,
            "context_window_tokens": spec.context_window_tokens,
            "max_output_tokens": spec.max_output_tokens,
            "message_limit": spec.message_limit,
            "history_token_budget": spec.history_token_budget,
            "fetch_limit": windows.fetch_limit(spec),
        }
        for spec in registry
    ]
    router = APIRouter(tags=["models"])

    @router.get("/api/models")
    async def list_models() -> dict[str, Any]:
        return {"default": registry.default_name, "models": models}

    return router
