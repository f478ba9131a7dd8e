"""Middlewares, outermost first: request context → error rendering → identity → rate limit → handler.

``render_error`` is the one place a :class:`BridgeError` becomes a REST JSON response.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from bridge.errors import (
    BridgeError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthenticatedError,
)
from bridge.keys import AUTH, IDENTITY, LIMITER, PUBLIC_ROUTES, RATE_DECISION, REQUEST_ID, SETTINGS

log = structlog.get_logger("bridge.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def route_template(request: web.Request) -> str:
    """The route's template (``/secrets/{tail}``), never the concrete path."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "<unmatched>"


def render_error(request: web.Request, err: BridgeError) -> web.Response:
    resp = web.json_response(err.to_dict(), status=err.status)
    for name, value in err.headers.items():
        resp.headers[name] = value
    return resp


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID_RE.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    structlog.contextvars.bind_contextvars(request_id=request_id)
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
        structlog.contextvars.unbind_contextvars("request_id")


_HTTP_CODES: dict[int, type[BridgeError]] = {
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: PayloadTooLargeError,
}


@web.middleware
async def error_renderer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BridgeError as err:
        return render_error(request, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_CODES.get(exc.status, InvalidRequestError)
        message = {
            404: "No such route.",
            405: f"Method {request.method} is not allowed here.",
            413: f"The request body is larger than {request.app[SETTINGS].max_body_bytes} bytes.",
        }.get(exc.status, exc.reason)
        resp = render_error(request, cls(message, status=exc.status))
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except Exception:
        log.exception("http.unhandled_error", route=route_template(request))
        return render_error(request, BridgeError("Internal error; the request id identifies it in the logs."))


def www_authenticate(request: web.Request, *, error: str | None = None, scope: str | None = None) -> str:
    """The ``WWW-Authenticate`` challenge, with RFC 9728 resource metadata when JWT issuer is configured."""
    settings = request.app[SETTINGS]
    parts = ['Bearer realm="vault-mcp-bridge"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    if settings.auth_jwt_enabled and settings.jwt_issuer:
        from bridge.mcp.metadata import resource_metadata_url

        parts.append(f'resource_metadata="{resource_metadata_url(request)}"')
    return ", ".join(parts)


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    if route.name in request.app[PUBLIC_ROUTES] or route.resource is None:
        return await handler(request)
    try:
        request[IDENTITY] = await request.app[AUTH].resolve(request)
    except UnauthenticatedError as err:
        presented = any(h in request.headers for h in ("Authorization", "X-API-Key"))
        err.headers["WWW-Authenticate"] = www_authenticate(
            request, error="invalid_token" if presented else None)
        raise
    return await handler(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    identity = request.get(IDENTITY)
    settings = request.app[SETTINGS]
    if identity is None or not settings.rate_limit_enabled:
        return await handler(request)
    decision = await request.app[LIMITER].hit(identity.subject)
    if not decision.allowed:
        log.info("ratelimit.rejected", agent=identity.subject)
        raise RateLimitedError(
            f"Rate limit of {decision.limit} requests per {settings.rate_limit_window_seconds:g}s exceeded; "
            "retry after the Retry-After seconds.",
            headers=decision.headers(),
        )
    request[RATE_DECISION] = decision
    response = await handler(request)
    for name, value in decision.headers().items():
        response.headers.setdefault(name, value)
    return response


