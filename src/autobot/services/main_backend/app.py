"""`create_app(config)`: the main-backend app. Nothing touches Redis, SQLite or the disk until the lifespan
starts; then it resolves the trusted proxies, opens the Redis client (autobot.redis_pool), initialises the
file store (schema created on first start), the transcripts directory, the LLM provider, the chat workflow
and the session registry, and closes them again on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI

from autobot.chat.transcripts import TranscriptStore
from autobot.chat.workflow import ChatWorkflowManager
from autobot.client.service_client import ServiceClient
from autobot.config import BackendConfig, ConfigError, ServiceConfig
from autobot.context import ContextWindowManager, ModelRegistry
from autobot.llm import ProviderBuilder, make_provider
from autobot.llm.ai_stack import AiStackProvider, ai_stack_builders
from autobot.middleware.body_size_limit import BodyLimit, route_body_limits
from autobot.services.http.app import add_routers, service_app
from autobot.services.http.health import Readiness, ReadinessCheck
from autobot.services.http.lifespan import open_redis
from autobot.services.main_backend import chat, files, sessions, tools
from autobot.services.main_backend.chat import MAX_MESSAGE_CHARS
from autobot.services.main_backend.errors import install_domain_errors
from autobot.services.main_backend.identity import IdentityPolicy
from autobot.services.main_backend.models import models_router
from autobot.services.main_backend.state import SERVICE_ID, BackendState
from autobot.sessions import SessionRegistry
from autobot.storage import ConversationFileManager

# JSON may escape every character as \uXXXX (6 bytes), plus room for the other fields.
JSON_BODY_LIMIT = 6 * MAX_MESSAGE_CHARS + 64 * 1024
# Multipart framing and the small form fields around an upload.
MULTIPART_OVERHEAD = 64 * 1024


def _backend_config(config: ServiceConfig) -> BackendConfig:
    if config.backend is None:
        raise ConfigError(f"service {config.service_id!r} has no 'backend' section; main-backend needs one")
    return config.backend


def load_registry(config: ServiceConfig) -> ModelRegistry:
    backend = _backend_config(config)
    return ModelRegistry.load(backend.models_file or config.models_file, default_model=backend.default_model)


def _body_limit(max_upload_bytes: int) -> BodyLimit:
    """The upload route takes a file; every other request is at most a chat message as JSON."""
    return route_body_limits(
        files.router.routes, {files.UPLOAD_ROUTE: max_upload_bytes + MULTIPART_OVERHEAD}, JSON_BODY_LIMIT
    )


def _dir_writable_check(path: Path) -> ReadinessCheck:
    async def check() -> None:
        ok = await asyncio.to_thread(lambda: path.is_dir() and os.access(path, os.W_OK | os.X_OK))
        if not ok:
            raise RuntimeError(f"{path} is not a writable directory")

    return check


def signing_key_ids(*signers: object) -> list[str]:
    """The key ids the given signing clients (ServiceClient, the signed ai-stack provider) use."""
    return sorted({str(s.signing_key_id) for s in signers if isinstance(s, ServiceClient | AiStackProvider)})


def create_app(
    config: ServiceConfig, *, provider_builders: Mapping[str, ProviderBuilder] | None = None
) -> FastAPI:
    """The main-backend app. `provider_builders` adds LLM provider builders (the signed "ai-stack" one)."""
    backend = _backend_config(config)
    # Read (and validated) now: a broken registry file fails the start, not the first chat.
    windows = ContextWindowManager(load_registry(config))
    readiness = Readiness()

    async def setup(app: FastAPI, stack: contextlib.AsyncExitStack) -> None:
        # Trusted proxies named by host are resolved once, now: a name that does not resolve fails the start.
        identity = await IdentityPolicy.from_config(backend.identity)
        redis = open_redis(config.redis, stack, readiness)
        file_store = ConversationFileManager.from_config(backend)
        await file_store.initialize()
        # The signed "ai-stack" provider needs the whole config (keys, peers); explicit builders win.
        provider = make_provider(
            config.llm, extra_builders={**ai_stack_builders(config), **(provider_builders or {})}
        )
        workflow = ChatWorkflowManager(
            redis=redis,
            windows=windows,
            provider=provider,
            transcripts=TranscriptStore(backend.transcripts_dir),
            history_ttl_s=backend.history_ttl_s,
            # Chat never drains the pool: one connection stays free for the readiness check, so a busy
            # backend is answered "busy" and still reports ready. Waiting longer than the pool would is
            # pointless.
            redis_slots=max(1, config.redis.max_connections - 1),
            busy_wait_s=config.redis.pool_timeout_s,
        )
        stack.push_async_callback(workflow.aclose)
        await workflow.initialize()
        registry = SessionRegistry(redis, backend.transcripts_dir)
        await registry.initialize()
        app.state.backend = BackendState(
            redis=redis,
            files=file_store,
            chat=workflow,
            windows=windows,
            sessions=registry,
            identity=identity,
            stream_heartbeat_s=backend.stream_heartbeat_s,
        )
        stack.callback(delattr, app.state, "backend")
        if config.security is not None and config.peers:
            # The signed client of the tool routes (npu-worker, browser-service); pooled, closed on shutdown.
            app.state.tools = ServiceClient.from_config(config)
            stack.push_async_callback(app.state.tools.aclose)
            stack.callback(delattr, app.state, "tools")
        # What GET /api/health reports as the signing key ids (a rotation checks them before it retires).
        app.state.signing_key_ids = signing_key_ids(provider, getattr(app.state, "tools", None))
        stack.callback(delattr, app.state, "signing_key_ids")
        readiness.add("database", file_store.storage_stats)
        readiness.add("transcripts", _dir_writable_check(backend.transcripts_dir))

    # No /docs or /openapi.json: the service matrix lists every public route, and those are not among them.
    app = service_app(
        SERVICE_ID, setup, readiness, body_limit=_body_limit(backend.max_upload_bytes), expose_docs=False
    )
    install_domain_errors(app)
    add_routers(app, sessions.router, chat.router, files.router, models_router(windows), tools.router)
    return app
