"""Middlewares, outermost first: request context → error rendering → identity → rate limit → in-flight cap →
handler.

``render_error`` is the one place a :class:`BridgeError` becomes a response: REST JSON, or on ``/mcp`` a
JSON-RPC error body (``bridge.mcp.protocol.rpc_error_for``) with the same HTTP status and headers. The error
renderer also writes the audit record of a refusal that no service method audited (an authenticated
identity refused by a middleware or a handler: scope, limits, body), so every refusal is audited once.
``charge`` is how a handler bills the rest of a request's cost once its body is parsed (a Transit batch of N
items costs N: the rate-limit middleware has charged 1 before the body was read).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from bridge.auth.api_key import CHALLENGE as API_KEY_CHALLENGE
from bridge.billing import bucket, rate_limited
from bridge.errors import (
    BridgeError,
    UnauthenticatedError,
    from_http_status,
)
from bridge.keys import (
    AUDIT,
    AUTH,
    CLIENT_REQUEST_ID,
    ERROR_CODE,
    IDENTITY,
    INFLIGHT,
    LIMITER,
    MCP_MESSAGE,
    PUBLIC_ROUTES,
    RATE_DECISION,
    REQUEST_ID,
    SETTINGS,
)
from bridge.mcp.metadata import MCP_PATH, resource_metadata_url
from bridge.mcp.protocol import peek_message, rpc_error, rpc_error_for
from bridge.mcp.tools import tools_by_name
from bridge.rest import rest_operation

log = structlog.get_logger("bridge.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def route_template(request: web.Request) -> str:
    """The route's template (``/secrets/{tail}``), never the concrete path."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "<unmatched>"


def is_mcp(request: web.Request) -> bool:
    """Whether errors are answered in JSON-RPC: ``/mcp`` (and ``/mcp/``), routed or not."""
    return request.path.rstrip("/") == MCP_PATH


def render_error(request: web.Request, err: BridgeError) -> web.Response:
    """The one renderer: REST JSON, or the JSON-RPC error of ``/mcp`` (the request's id when it was read,
    see :func:`error_renderer`; else ``null``)."""
    request[ERROR_CODE] = err.code
    if is_mcp(request):
        peek = request.get(MCP_MESSAGE)
        return rpc_error(peek.id if peek is not None else None, rpc_error_for(err))
    resp = web.json_response(err.to_dict(), status=err.status)
    for name, value in err.headers.items():
        resp.headers[name] = value
    return resp


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request id is always the bridge's own (logs, audit, ``X-Request-Id`` of the answer); a client's
    well-formed ``X-Request-Id`` is kept beside it as ``client_request_id``."""
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
        log.info(
            "http.request",
            agent=identity.subject if identity else None,
            auth_method=identity.auth_method if identity else None,
            method=request.method,
            route=route_template(request),
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("request_id", "client_request_id")


def _http_error(request: web.Request, exc: web.HTTPException) -> BridgeError:
    """An aiohttp HTTP exception (the router's 404/405, the body limit's 413, a 400) as a bridge error."""
    message = {
        404: "No such route.",
        405: f"Method {request.method} is not allowed here.",
        413: f"The request body is larger than {request.app[SETTINGS].max_body_bytes} bytes.",
    }.get(exc.status, exc.reason)
    err = from_http_status(exc.status, message)
    if exc.status == 405 and "Allow" in exc.headers:
        err.headers["Allow"] = exc.headers["Allow"]
    return err


@web.middleware
async def error_renderer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BridgeError as err:
        return await _refused(request, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return await _refused(request, _http_error(request, exc))
    except Exception:
        log.exception("http.unhandled_error", route=route_template(request))
        return render_error(request, BridgeError("Internal error; the request id identifies it in the logs."))


async def _refused(request: web.Request, err: BridgeError) -> web.Response:
    """Render a refusal: on ``/mcp`` first learn the message's id (a bounded peek at the body, never for a
    413), then write the audit record unless a service method already did."""
    if is_mcp(request) and MCP_MESSAGE not in request and err.status != 413:
        request[MCP_MESSAGE] = await peek_message(request)
    await _audit_refusal(request, err)
    return render_error(request, err)


def operation_of(request: web.Request) -> str | None:
    """The service operation a refused request asked for: a ``tools/call``'s tool, or the REST route's."""
    if is_mcp(request):
        peek = request.get(MCP_MESSAGE)
        spec = tools_by_name().get(peek.tool or "") if peek is not None else None
        return spec.operation if spec is not None else None
    return rest_operation(request)


async def _audit_refusal(request: web.Request, err: BridgeError) -> None:
    identity = request.get(IDENTITY)
    if identity is None or err.audited or err.status >= 500 or AUDIT not in request.app:
        return
    err.audited = True
    await request.app[AUDIT].refusal(identity, err.operation or operation_of(request), err,
                                     route=route_template(request))


def www_authenticate(request: web.Request, *, error: str | None = None, scope: str | None = None) -> str:
    """The ``Bearer`` challenge (JWT, insufficient scope), with RFC 9728 resource metadata when JWT issuer
    is configured. Every value in it is ours or built from ``MCP_RESOURCE_URL`` / a validated host, never a
    raw ``Host`` header (``bridge.mcp.metadata.base_url``)."""
    settings = request.app[SETTINGS]
    parts = ['Bearer realm="vault-mcp-bridge"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    if settings.auth_jwt_enabled and settings.jwt_issuer:
        parts.append(f'resource_metadata="{resource_metadata_url(request)}"')
    return ", ".join(parts)


def unauthenticated_challenge(request: web.Request) -> str:
    """The 401 challenge. It names the scheme of the credential that failed: a wrong or repeated
    ``X-API-Key`` gets the ``ApiKey`` scheme, never ``Bearer`` (an MCP client reads a Bearer challenge as "start
    OAuth"); a bad bearer token gets ``Bearer error="invalid_token"``. Without any credential: ``Bearer`` with
    the RFC 9728 metadata when JWT with an issuer is configured (OAuth is then the way in), else ``ApiKey``
    when API keys are enabled."""
    settings = request.app[SETTINGS]
    if "Authorization" in request.headers:
        return www_authenticate(request, error="invalid_token")
    if "X-API-Key" in request.headers:
        return API_KEY_CHALLENGE
    if (settings.auth_jwt_enabled and settings.jwt_issuer) or not settings.auth_api_key_enabled:
        return www_authenticate(request)
    return API_KEY_CHALLENGE


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    if route.name in request.app[PUBLIC_ROUTES] or route.resource is None:
        return await handler(request)
    try:
        request[IDENTITY] = await request.app[AUTH].resolve(request)
    except UnauthenticatedError as err:
        # the authenticator that refused may have named its own scheme (an invalid API key: ApiKey)
        err.headers.setdefault("WWW-Authenticate", unauthenticated_challenge(request))
        raise
    return await handler(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Charge every authenticated request 1 token of its agent's bucket before anything else is done."""
    identity = request.get(IDENTITY)
    settings = request.app[SETTINGS]
    if identity is None or not settings.rate_limit_enabled:
        return await handler(request)
    limiter = request.app[LIMITER]
    key, quota = bucket(identity, limiter.default)
    decision = await limiter.hit(key, quota)
    if not decision.allowed:
        raise rate_limited(request, quota, decision, 1)
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


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``AGENT_MAX_INFLIGHT``: at most that many requests of one agent in progress (see bridge/inflight.py)."""
    identity = request.get(IDENTITY)
    if identity is None:
        return await handler(request)
    async with request.app[INFLIGHT].slot(identity.subject):
        return await handler(request)
