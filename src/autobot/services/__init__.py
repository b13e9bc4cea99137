"""The four Python service apps: ``main_backend`` (a package: chat, files, models), ``npu_worker``,
``ai_stack`` and ``browser_service``, each with a ``create_app(config)`` built on ``http`` (the edge they
share: errors, health, lifespan, server-sent events)."""
