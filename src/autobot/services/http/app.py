"""`service_app`: the FastAPI app every service's `create_app` starts from, so they all behave the same at the
edges. A service then adds only its own routers and resources.

From the outside in: the body size limit (`autobot.middleware.body_size_limit`), the error handlers
(`errors`), the health router (`health`), then the service's routers; the lifespan (`lifespan`) opens and
closes what `setup` registers. The service-auth middleware wraps all of it, in the deployed entry file.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from autobot.middleware.body_size_limit import BodyLimit, BodySizeLimitMiddleware
from autobot.services.http.errors import install_error_handlers
from autobot.services.http.health import Readiness, health_router
from autobot.services.http.lifespan import LifespanSetup, lifespan_with_stack


def service_app(
    service_id: str,
    setup: LifespanSetup,
    readiness: Readiness,
    *,
    body_limit: BodyLimit,
    expose_docs: bool = True,
) -> FastAPI:
    """The app every service starts from: lifespan from `setup`, JSON errors, body size limit, health routes.

    `readiness` is the one `setup` fills in; `expose_docs=False` drops /docs, /redoc and /openapi.json.
    """
    docs: dict[str, Any] = {} if expose_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title=f"AutoBot {service_id}", lifespan=lifespan_with_stack(setup), **docs)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, limit_for=body_limit)
    add_routers(app, health_router(service_id, readiness))
    return app


def add_routers(app: FastAPI, *routers: APIRouter) -> None:
    """Serve the routes of each router as the app's own: `app.routes` then lists every route it serves.

    Not `include_router`: recent FastAPI versions nest an included router as one lazy entry of `app.routes`,
    which hides the routes from anything that lists them (the check against the service matrix does). The
    routers here take no prefix, tags or dependencies at inclusion, so nothing of that is lost.
    """
    for router in routers:
        app.router.routes.extend(router.routes)
