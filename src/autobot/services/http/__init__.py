"""The HTTP edge every service app (main-backend, npu-worker, ai-stack, browser-service) is built from.

Modules: ``app`` (``service_app``: the scaffolding each ``create_app`` starts from, the others wired together
the same way in every service), ``errors`` (``ApiError`` and the handlers that turn every error into the one
JSON shape of ``autobot.middleware.asgi``), ``health`` (liveness and readiness routes), ``lifespan``
(resources opened on start-up and closed in reverse order, the Redis client among them), ``sse``
(server-sent events). The body size limit is middleware: ``autobot.middleware.body_size_limit``.
"""
