"""Render the ASGI entry file template (templates/asgi_entry.py.j2) the way Ansible's template module does.

Ansible renders it on deploy; this helper exists so tests (and operators) can render both phase variants and
check that the result imports exactly one middleware class. jinja2 ships with Ansible and is a test extra
here, so it is imported only when this function runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from autobot.security.keys import is_service_id

MIDDLEWARE_CLASSES = {
    "logging": "ServiceAuthLoggingMiddleware",
    "enforcement": "ServiceAuthEnforcementMiddleware",
}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def render_entry(
    template: Path,
    *,
    service_id: str,
    app_module: str,
    config_path: Path | str,
    service_auth_middleware: Literal["logging", "enforcement", "none"],
) -> str:
    if not is_service_id(service_id):
        raise ValueError(f"invalid service id {service_id!r}")
    if _MODULE.fullmatch(app_module) is None:
        raise ValueError(f"invalid app module {app_module!r}")
    if service_auth_middleware not in (*MIDDLEWARE_CLASSES, "none"):
        raise ValueError(
            "service_auth_middleware must be 'logging', 'enforcement' or 'none', "
            f"not {service_auth_middleware!r}"
        )
    import jinja2

    env = jinja2.Environment(  # noqa: S701 (renders Python source, not HTML)
        undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True
    )
    return env.from_string(template.read_text(encoding="utf-8")).render(
        service_id=service_id,
        app_module=app_module,
        config_path=str(config_path),
        service_auth_middleware=service_auth_middleware,
    )
