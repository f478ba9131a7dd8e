"""DNS-rebinding protection for ``/mcp``: a present ``Origin`` that is not allowed gets 403 before anything else.

Allowed origins are ``MCP_ALLOWED_ORIGINS`` (exact ``scheme://host[:port]`` values) when it is set; otherwise
any origin whose host is ``localhost``/``127.0.0.1``/``::1``, the configured ``HOST`` (unless it is a wildcard
address) or the host of ``MCP_RESOURCE_URL``. The request's own ``Host`` header is never trusted for this: in a
rebinding attack it carries the attacker's name too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from yarl import URL

from bridge.config import Settings
from bridge.errors import ForbiddenError
from bridge.keys import SETTINGS
from bridge.mcp.metadata import MCP_PATH

log = structlog.get_logger("bridge.mcp")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _host_of(origin: str) -> str | None:
    try:
        url = URL(origin)
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url.host.lower().strip("[]")


def origin_allowed(origin: str, settings: Settings) -> bool:
    if settings.mcp_allowed_origins:
        return _normalize(origin) in {_normalize(o) for o in settings.mcp_allowed_origins}
    host = _host_of(origin)
    if host is None:
        return False
    own = set(LOCAL_HOSTS)
    if settings.host not in _WILDCARD_HOSTS:
        own.add(settings.host.lower().strip("[]"))
    if settings.mcp_resource_url:
        resource_host = URL(settings.mcp_resource_url).host
        if resource_host:
            own.add(resource_host.lower().strip("[]"))
    return host in own


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Sits after ``error_renderer`` and before ``identity_middleware``: a bad Origin is 403, never 401."""
    if request.path.rstrip("/") != MCP_PATH:
        return await handler(request)
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request.app[SETTINGS]):
        log.warning("mcp.origin.rejected", method=request.method)
        # rendered by error_renderer: a JSON-RPC error -31403 with data.code "origin_not_allowed"
        raise ForbiddenError("Origin not allowed: this MCP endpoint only accepts browser requests from the "
                             "origins in MCP_ALLOWED_ORIGINS (DNS-rebinding protection).", code="origin_not_allowed")
    return await handler(request)
