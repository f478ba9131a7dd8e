"""Middlewares, outermost first: request context → error rendering → identity → rate limit → in-flight cap →
handler.

``render_error`` is the one place a :class:`BridgeError` becomes a REST JSON response. ``charge`` is how a
handler bills the rest of a request's cost once its body is parsed (a Transit batch of N items costs N: the
rate-limit middleware has charged 1 before the body was read).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from bridge.auth.identity import Identity
from bridge.errors import (
    BridgeError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthenticatedError,
)
from bridge.keys import AUTH, IDENTITY, INFLIGHT, LIMITER, PUBLIC_ROUTES, RATE_DECISION, REQUEST_ID, SETTINGS
from bridge.ratelimit import Decision, Quota

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


def bucket(identity: Identity, default: Quota) -> tuple[str, Quota]:
    """The identity's bucket and quota. One bucket per agent and limit: an agent's keys without a ``rate_limit``
    share the default one; a key with its own limit has a bucket for that limit (one key's spending never turns
    into another limit's debt)."""
    own = identity.rate_limit
    if own is None:
        return identity.subject, default
    return f"{identity.subject}#{own.requests}/{own.window:g}/{own.burst}", own


def _refused(request: web.Request, quota: Quota, decision: Decision, cost: int) -> RateLimitedError:
    identity = request[IDENTITY]
    log.info("ratelimit.rejected", agent=identity.subject, cost=cost, remaining=decision.remaining)
    what = "request" if cost == 1 else f"request (cost {cost})"
    return RateLimitedError(
        f"Rate limit exceeded for this {what}: {quota.requests} requests per {quota.window:g}s, in bursts of at "
        f"most {quota.burst}; retry after the Retry-After seconds.", headers=decision.headers(),
        extra={"cost": cost})  # the cost known when refused: 1 before the body is read, a batch's items after


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
        raise _refused(request, quota, decision, 1)
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


async def charge(request: web.Request, cost: int) -> None:
    """Bill a request whose cost is ``cost`` tokens in all (known once its body is parsed, before Vault is
    called): the middleware charged 1, this charges the other ``cost - 1``, in one step through the same limiter
    API. A cost larger than the whole bucket can never pass and is 400 ``batch_too_large``; a refusal is 429 like
    the middleware's, and costs nothing (the middleware's token is given back)."""
    identity = request.get(IDENTITY)
    if cost <= 1 or identity is None or not request.app[SETTINGS].rate_limit_enabled:
        return
    limiter = request.app[LIMITER]
    key, quota = bucket(identity, limiter.default)
    if cost > quota.burst:
        raise InvalidRequestError(
            f"This request costs {cost} (one per batch item), more than this identity's whole rate-limit burst "
            f"of {quota.burst}; send at most {quota.burst} items per request.", code="batch_too_large",
            extra={"max_items": quota.burst})
    decision = await limiter.hit(key, quota, cost - 1)
    if not decision.allowed:
        # A refusal consumes nothing: give back the middleware's token. Then the answer is this whole request's:
        # Retry-After (the time until cost - 1 more tokens after that one) is the time until all cost fit.
        await limiter.hit(key, quota, -1)
        whole = Decision(False, decision.limit, min(decision.limit, decision.remaining + 1),
                         max(0.0, decision.reset_after - quota.interval), decision.retry_after)
        raise _refused(request, quota, whole, cost)
    request[RATE_DECISION] = decision


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``AGENT_MAX_INFLIGHT``: at most that many requests of one agent in progress (see bridge/inflight.py)."""
    identity = request.get(IDENTITY)
    if identity is None:
        return await handler(request)
    async with request.app[INFLIGHT].slot(identity.subject):
        return await handler(request)
