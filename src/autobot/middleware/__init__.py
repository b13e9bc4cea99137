"""ASGI middleware, in the order a request passes it (see docs/architecture.md, "The request path").

The deployed entry file wraps the service app in one phase middleware, ``service_auth_logging`` or
``service_auth_enforcement`` (the phase is which file the entry imports), both built on
``service_auth_core`` (verify, audit, act on the decision), which reads signed bodies through
``buffered_body``. Inside the app, ``body_size_limit`` refuses oversize bodies before the routers see them.
``asgi`` holds what they share with the service apps: the request head (``header``, ``content_length``) and
the one JSON error shape (``error_body``, ``error_response``, ``ERROR_CODES``).
"""
