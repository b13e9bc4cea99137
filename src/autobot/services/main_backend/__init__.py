"""main-backend: async chat, conversation files and context windows over HTTP.

Modules: ``app`` (``create_app``: the lifespan that opens Redis, the file store, the transcripts directory,
the LLM provider, the chat workflow and the session registry; the per-route body limits), ``state`` (what the
lifespan opened, the caller and the session's owner, as route dependencies), ``identity`` (who the caller is:
the trusted identity header or the anonymous cookie), one router a domain: ``sessions``, ``chat``, ``files``,
``models`` (health comes with every service from ``autobot.services.http``), and ``errors`` (the table that
turns session, chat, context, LLM and storage exceptions into JSON errors). The routes are exactly the
``public`` list of main-backend in inventory/group_vars/all/services.yml.
"""

from autobot.services.main_backend.app import create_app, load_registry
from autobot.services.main_backend.chat import MAX_MESSAGE_CHARS
from autobot.services.main_backend.state import SERVICE_ID, BackendState

__all__ = ["MAX_MESSAGE_CHARS", "SERVICE_ID", "BackendState", "create_app", "load_registry"]
