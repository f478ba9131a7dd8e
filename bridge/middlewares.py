"""The bridge's own middlewares, each built by a small factory from what it needs (never by reading the settings
on every request). Their order is defined once, in :func:`bridge.app.create_app`:

request context → error rendering → metrics → edge (``Host``/``Origin``) → identity → quarantine → rate limit →
in-flight cap → handler (with tracing outermost when it is on).

:func:`render_error` is the one place a :class:`BridgeError` becomes a response: REST JSON, or on ``/mcp`` a
JSON-RPC error body (``bridge.mcp.protocol.rpc_error_for``) with the same HTTP status and headers. The error
middleware also writes the audit record of a refusal that no operation recorded (an authenticated identity
refused by a middleware: the rate limit, the in-flight cap, a route's method ...), so every refusal is audited
once.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Collection

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from bridge.audit import AuditLog
from bridge.auth import AuthChain
from bridge.billing import bucket, rate_limited
from bridge.errors import BridgeError, UnauthenticatedError, from_http_status
from bridge.inflight import InflightLimiter
from bridge.logging import info_line
from bridge.mcp.metadata import MCP_PATH, Challenges
from bridge.mcp.protocol import peek_message, rpc_error, rpc_error_for
from bridge.quarantine import Quarantine
from bridge.ratelimit import RateLimiter
from bridge.routing import (
    CLIENT_REQUEST_ID,
    ERROR_CODE,
    IDENTITY,
    INFLIGHT_SLOT,
    MCP_MESSAGE,
    RATE_DECISION,
    REQUEST_ID,
    Handler,
    route_template,
)

log = structlog.get_logger("bridge.access")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

OperationOf = Callable[[web.Request], str | None]
"""The operation a request asks for, from its route (REST) or its message (MCP), for a refusal's record."""


def is_mcp(request: web.Request) -> bool:
    """Whether errors are answered in JSON-RPC: ``/mcp`` (and ``/mcp/``), routed or not."""
    return request.path.rstrip("/") == MCP_PATH


def render_error(request: web.Request, err: BridgeError) -> web.Response:
    """The one renderer: REST JSON, or the JSON-RPC error of ``/mcp`` (the request's id when it was read,
    see :func:`error_middleware`; else ``null``)."""
    request[ERROR_CODE] = err.code
    if is_mcp(request):
        peek = request.get(MCP_MESSAGE)
        return rpc_error(peek.id if peek is not None else None, rpc_error_for(err))
    resp = web.json_response(err.to_dict(), status=err.status)
    for name, value in err.headers.items():
        resp.headers[name] = value
    return resp


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request id is always the bridge's own (logs, audit, ``X-Request-Id`` of the answer); a client's
    well-formed ``X-Request-Id`` is kept beside it as ``client_request_id``. One access line per request."""
    incoming = request.headers.get("X-Request-Id", "")
    request_id = os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    structlog.contextvars.bind_contextvars(request_id=request_id)
    if _REQUEST_ID_RE.match(incoming):
        request[CLIENT_REQUEST_ID] = incoming
        structlog.contextvars.bind_contextvars(client_request_id=incoming)
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        identity = request.get(IDENTITY)
        line = {
            "agent": identity.subject if identity else None,
            "auth_method": identity.auth_method if identity else None,
            "method": request.method,
            "route": route_template(request),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        peek = request.get(MCP_MESSAGE)
        if peek is not None and peek.method is not None:  # /mcp: which JSON-RPC method, which tool
            line["mcp_method"] = peek.method
            if peek.tool is not None:
                line["tool"] = peek.tool
        info_line("http.request", line)
        structlog.contextvars.unbind_contextvars("request_id", "client_request_id")


def error_middleware(*, max_body_bytes: int, audit: AuditLog, operation_of: OperationOf) -> Middleware:
    """Render every refusal (:func:`render_error`): the bridge's errors, aiohttp's own HTTP errors (the router's
    404/405, a 413) and, as a 500, anything unexpected. A refusal of an authenticated identity that no operation
    recorded gets its audit record here, naming the operation ``operation_of`` finds."""
    messages = {404: "No such route.", 413: f"The request body is larger than {max_body_bytes} bytes."}

    def http_error(request: web.Request, exc: web.HTTPException) -> BridgeError:
        message = f"Method {request.method} is not allowed here." if exc.status == 405 else \
            messages.get(exc.status, exc.reason)
        err = from_http_status(exc.status, message)
        if exc.status == 405 and "Allow" in exc.headers:
            err.headers["Allow"] = exc.headers["Allow"]
        return err

    async def refused(request: web.Request, err: BridgeError) -> web.Response:
        """On ``/mcp`` first learn the message's id (a bounded peek at the body, never for a 413), then write the
        audit record unless an operation already did."""
        if is_mcp(request) and MCP_MESSAGE not in request and err.status != 413:
            request[MCP_MESSAGE] = await peek_message(request)
        identity = request.get(IDENTITY)
        if identity is not None and not err.audited and err.status < 500:
            err.audited = True
            await audit.refusal(identity, operation_of(request), err, route=route_template(request))
        return render_error(request, err)

    @web.middleware
    async def render_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BridgeError as err:
            return await refused(request, err)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return await refused(request, http_error(request, exc))
        except Exception:
            log.exception("http.unhandled_error", route=route_template(request))
            return render_error(request, BridgeError("Internal error; the request id identifies it in the logs."))

    return render_middleware


def identity_middleware(auth: AuthChain, public: Collection[str], challenges: Challenges) -> Middleware:
    """Authenticate every request to a route not in ``public`` (a 401 carries the challenge of the scheme
    that failed)."""

    @web.middleware
    async def authenticate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        if route.name in public or route.resource is None:
            return await handler(request)
        try:
            request[IDENTITY] = await auth.resolve(request)
        except UnauthenticatedError as err:
            # the authenticator that refused may have named its own scheme (an invalid API key: ApiKey)
            err.headers.setdefault("WWW-Authenticate", challenges.unauthenticated(request))
            raise
        return await handler(request)

    return authenticate_middleware


def quarantine_middleware(quarantine: Quarantine, seen: Callable[[str], None] | None = None) -> Middleware:
    """Right after the identity: every request of a quarantined agent is 403 ``agent_quarantined`` (whatever its
    identity, auth method or route; audited as denied by the error middleware). Every other authenticated request
    is noted by ``seen`` (``LEASE_REVOKE_ON_IDLE``)."""

    @web.middleware
    async def quarantine_gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = request.get(IDENTITY)
        if identity is not None:
            quarantine.check(identity.subject)
            if seen is not None:
                seen(identity.subject)
        return await handler(request)

    return quarantine_gate_middleware


def rate_limit_middleware(limiter: RateLimiter) -> Middleware:
    """Charge every authenticated request 1 token of its agent's bucket before anything else is done (an
    operation's further cost is the executor's); every answer carries the bucket's ``RateLimit-*`` headers."""

    @web.middleware
    async def charge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = request.get(IDENTITY)
        if identity is None:
            return await handler(request)
        key, quota = bucket(identity, limiter.default)
        decision = await limiter.hit(key, quota)
        if not decision.allowed:
            raise rate_limited(identity, quota, decision, 1)
        request[RATE_DECISION] = decision
        try:
            response = await handler(request)
        except BridgeError as err:  # charged all the same: an error answer carries the bucket's state too, unless
            if "Retry-After" not in err.headers:  # it says when to retry something else (Vault's quota, a busy agent)
                for name, value in request[RATE_DECISION].headers().items():  # the latest decision (see charge)
                    err.headers.setdefault(name, value)
            raise
        for name, value in request[RATE_DECISION].headers().items():
            response.headers.setdefault(name, value)
        return response

    return charge_middleware


def inflight_middleware(inflight: InflightLimiter) -> Middleware:
    """``AGENT_MAX_INFLIGHT``: at most that many requests of one agent in progress (see bridge/inflight.py)."""

    @web.middleware
    async def slot_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = request.get(IDENTITY)
        if identity is None:
            return await handler(request)
        key = identity.subject
        held = await inflight.acquire(key)
        try:
            request[INFLIGHT_SLOT] = held  # a notification stream releases it early
            return await handler(request)
        finally:
            inflight.done(key, held)

    return slot_middleware
