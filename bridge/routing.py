"""What every middleware and handler shares: the one ``Handler`` type, the one ``route_template``, and the
``web.RequestKey`` of each value a middleware leaves on a request for the ones inside it (the app's own
``web.AppKey`` are in :mod:`bridge.keys`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.auth.identity import Identity
from bridge.inflight import Slot
from bridge.mcp.protocol import RpcPeek
from bridge.ratelimit import Decision

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", Identity)
RATE_DECISION = web.RequestKey("rate_decision", Decision)
"""The latest rate-limit decision of the request (the middleware's, then the executor's), for its headers."""
CLIENT_REQUEST_ID = web.RequestKey("client_request_id", str)
"""A client-sent, well-formed ``X-Request-Id``: logged and audited beside the bridge's own ``REQUEST_ID``."""
ERROR_CODE = web.RequestKey("error_code", str)
"""The bridge error code of a non-2xx answer made without raising (a JSON-RPC error of ``/mcp``), for metrics."""
MCP_MESSAGE = web.RequestKey("mcp_message", RpcPeek)
"""The ``/mcp`` message's id, method and tool once read (by the handler, or peeked to render a refusal)."""


def route_template(request: web.Request) -> str:
    """The matched route's template (``/secrets/{tail}``), never the concrete path: what logs, metrics and traces
    name a request by."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"
INFLIGHT_SLOT = web.RequestKey("inflight_slot", Slot)
"""The request's ``AGENT_MAX_INFLIGHT`` slot, which a notification stream gives back once it is open."""
