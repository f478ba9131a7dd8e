"""The operator status page (``GET /status``, aiohttp-jinja2), and :func:`setup_ops_routes`, which adds it with
``/metrics`` and ``/openapi.json``.

The status page shows Vault's address (without credentials), reachability, seal state and version (from the
background probe, :mod:`bridge.probe`: a page view never calls Vault); the
bridge token's TTL and next renewal; the enabled auth methods; the rate-limit settings; per-agent request
counts, rejections and last-seen times over the recent minutes; the recent errors (status, code, route
template and request id only); and an inline-SVG chart of requests per minute. No secret, key, path or token
is ever put into its context. It is served only to clients in ``STATUS_ALLOWED_NETWORKS`` (loopback by
default) or presenting an ``X-API-Key`` listed in ``ADMIN_API_KEYS``; everyone else gets 403. The network rule
applies to the direct peer of a request no proxy relayed (:func:`relayed`): behind a proxy every client would
otherwise be "from" the proxy's address, so there only an admin key opens the page.

The page also lists the quarantined agents and has the kill switch's buttons (issue 13): plain HTML forms, no
JavaScript, posting to ``POST /status/quarantine`` (:func:`status_quarantine_handler`) under the same access rule
as the page, with a CSRF pair: a random cookie (``HttpOnly``, ``SameSite=Strict``, ``Path=/status``) and, in each
form, ``HMAC(key, cookie)``; the key derives from ``MCP_SESSION_SECRET`` (so a form served by one replica posts to
another), else it is random per process. A browser's ``Origin`` and ``Sec-Fetch-Site``, when sent, must name the
page's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bridge.auth.mtls import PROXY_SECRET_HEADER
from bridge.config import IDENT_RE, Settings
from bridge.edge import same_origin_post
from bridge.errors import ForbiddenError, InvalidRequestError, UnsupportedMediaError, from_vault_error
from bridge.keys import AUTH, KEEPER, METRICS, OPS_STATS, PROBE, QUARANTINE, SETTINGS, STATUS_CSRF_KEY
from bridge.logging import safe_url
from bridge.ops.metrics import metrics_handler
from bridge.ops.openapi import openapi_handler
from bridge.ops.stats import MinuteRow, OpsStats
from bridge.vault.errors import VaultError

CHART_WIDTH = 600
CHART_HEIGHT = 120


def setup_templates(app: web.Application) -> None:
    """The status page's jinja2 environment (autoescaped; an undefined name is an error)."""
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("bridge", "templates"),
                         autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)


def setup_ops_routes(app: web.Application, document: dict[str, Any]) -> frozenset[str]:
    """``/metrics``, ``/status`` and ``/openapi.json`` (serving ``document``); returns their names (public: no
    agent identity; ``/status`` checks its own access). The page's templates: :func:`setup_templates`."""
    r = app.router
    r.add_get("/metrics", metrics_handler(app[METRICS]), name="metrics")
    r.add_get("/status", status_handler, name="status")
    r.add_post("/status/quarantine", status_quarantine_handler, name="status_quarantine")
    r.add_get("/openapi.json", openapi_handler(document), name="openapi")
    return frozenset({"metrics", "status", "status_quarantine", "openapi"})


# -- access --------------------------------------------------------------------------------------------

FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP", "Via")
"""Headers a proxy adds: a request carrying any of them was relayed, whoever its direct peer is."""


def _peer(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The direct TCP peer (never a forwarded address)."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    host = peer[0] if isinstance(peer, tuple) and peer else request.remote
    try:
        return ipaddress.ip_address(str(host or "").split("%")[0])
    except ValueError:
        return None


def relayed(request: web.Request) -> bool:
    """Whether a proxy relayed the request: it carries a forwarding header, or the ``X-Proxy-Secret`` header the
    mTLS proxy adds to everything it relays (matching or not: either way the direct peer says nothing about the
    client). A browser on the bridge's own host (``make run``, whose demo proxy is loopback) sends neither."""
    return any(name in request.headers for name in (*FORWARDING_HEADERS, PROXY_SECRET_HEADER))


def status_allowed(request: web.Request) -> bool:
    """From an allowed network as the direct peer of a request no proxy relayed, or with an admin API key
    (compared in constant time)."""
    settings = request.app[SETTINGS]
    peer = _peer(request)
    if (peer is not None and any(peer in net for net in settings.status_allowed_networks)
            and not relayed(request)):
        return True
    return admin_key(settings, request.headers.get("X-API-Key", "")) is not None


def admin_key(settings: Settings, presented: str) -> str | None:
    """``admin:<8 hex of the key's SHA-256>`` (who acted, for logs and audit records; never the key) when
    ``presented`` is one of ``ADMIN_API_KEYS`` (every key compared, in constant time), else ``None``."""
    if not presented or not settings.admin_api_keys:
        return None
    matches = [hmac.compare_digest(presented.encode(), k.get_secret_value().encode())
               for k in settings.admin_api_keys]
    if not any(matches):
        return None
    return "admin:" + hashlib.sha256(presented.encode()).hexdigest()[:8]


# -- the kill switch's forms -------------------------------------------------------------------------------

CSRF_COOKIE = "vmb_status_csrf"


def status_csrf_key(settings: Settings) -> bytes:
    """The key of the forms' CSRF tokens: derived from ``MCP_SESSION_SECRET`` (every replica the same), else
    random per process."""
    if settings.mcp_session_secret is not None:
        return hashlib.sha256(b"vault-mcp-bridge status csrf\0" + settings.mcp_session_secret.get_secret_value()
                              .encode()).digest()
    return os.urandom(32)


def csrf_token(key: bytes, cookie: str) -> str:
    return hmac.new(key, b"status-csrf\0" + cookie.encode(), hashlib.sha256).hexdigest()


def _csrf_cookie(request: web.Request) -> tuple[str, bool]:
    """The browser's CSRF cookie, or a new one (``True``: to be set)."""
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    if 32 <= len(cookie) <= 64 and cookie.isascii():
        return cookie, False
    return secrets.token_urlsafe(32), True


async def status_quarantine_handler(request: web.Request) -> web.Response:
    """``POST /status/quarantine`` (form: ``agent``, ``action`` = quarantine | release, ``reason``, ``csrf``): the
    status page's buttons; answers 303 back to the page."""
    if not status_allowed(request):
        raise ForbiddenError("The status page is only served to STATUS_ALLOWED_NETWORKS or with an admin "
                             "X-API-Key (ADMIN_API_KEYS).", code="status_forbidden")
    if request.content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaError("Send the status page's form (application/x-www-form-urlencoded).")
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("The form could not be read.") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    expected = csrf_token(request.app[STATUS_CSRF_KEY], cookie)
    if not same_origin_post(request) or not cookie or not hmac.compare_digest(fields.get("csrf", ""), expected):
        raise ForbiddenError("The form was not sent from the status page (a missing or stale form token): reload "
                             "the page and use its buttons.", code="status_csrf_failed")
    agent = fields.get("agent", "").strip().lower()
    action = fields.get("action", "")
    if not IDENT_RE.match(agent) or action not in ("quarantine", "release"):
        raise InvalidRequestError("Name an agent (^[a-z0-9][a-z0-9_-]{0,63}$) and an action (quarantine or "
                                  "release).")
    settings = request.app[SETTINGS]
    actor = admin_key(settings, request.headers.get("X-API-Key", "")) or f"status-page:{_peer(request) or '?'}"
    quarantine = request.app[QUARANTINE]
    try:
        if action == "quarantine":
            await quarantine.quarantine(agent, fields.get("reason", "")[:256] or "from the status page", actor)
        else:
            await quarantine.release(agent, actor)
    except VaultError as exc:
        raise from_vault_error(exc, what="the quarantine state") from None
    raise web.HTTPSeeOther("/status#quarantine", headers={"Cache-Control": "no-store"})


# -- the page --------------------------------------------------------------------------------------------

def chart(rows: list[MinuteRow]) -> dict[str, Any]:
    """Bar geometry for the requests-per-minute chart (errors overlaid), computed here, drawn as SVG."""
    peak = max((r.requests for r in rows), default=0)
    scale = max(peak, 1)
    n = max(len(rows), 1)
    slot = CHART_WIDTH / n
    bars = []
    for i, r in enumerate(rows):
        h = round(r.requests / scale * (CHART_HEIGHT - 10), 1)
        eh = round(r.errors / scale * (CHART_HEIGHT - 10), 1)
        label = datetime.fromtimestamp(r.minute_start, UTC).strftime("%H:%M")
        bars.append({"x": round(i * slot + 1, 1), "w": round(max(slot - 2, 1), 1), "h": h,
                     "y": round(CHART_HEIGHT - h, 1), "eh": eh, "ey": round(CHART_HEIGHT - eh, 1),
                     "title": f"{label} UTC: {r.requests} requests, {r.errors} errors, "
                              f"{r.rejections} rate-limited"})
    first = datetime.fromtimestamp(rows[0].minute_start, UTC).strftime("%H:%M") if rows else ""
    last = datetime.fromtimestamp(rows[-1].minute_start, UTC).strftime("%H:%M") if rows else ""
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "bars": bars, "peak": peak, "first": first,
            "last": last, "total": sum(r.requests for r in rows)}


def _ago(ts: float, now: float) -> str:
    if ts <= 0:
        return "never"
    secs = max(0, int(now - ts))
    if secs < 60:
        return f"{secs}s ago"
    if secs < 3600:
        return f"{secs // 60}m {secs % 60}s ago"
    return f"{secs // 3600}h {secs % 3600 // 60}m ago"


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "never expires" if seconds is None else "—"
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    mins, s = divmod(rem, 60)
    return f"{h}h {mins}m {s}s" if h else (f"{mins}m {s}s" if mins else f"{s}s")


def vault_status(request: web.Request) -> dict[str, Any]:
    """Vault as the background probe last saw it."""
    state = request.app[PROBE].state
    return {"reachable": bool(state.reachable), "sealed": state.sealed, "version": state.version,
            "initialized": state.initialized, "error": state.error}


def token_status(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    keeper = request.app[KEEPER]
    state = keeper.state
    remaining = keeper.remaining()
    next_in = None if math.isinf(state.next_at) else state.next_at - time.monotonic()
    return {
        "method": "approle" if keeper.can_login else ("static token" if settings.vault_token else "none"),
        "valid": keeper.valid,
        "ttl": _duration(remaining) if state.token else "no token",
        "renewable": state.renewable,
        "root": state.is_root,
        "next_action": state.next_action,
        "next_in": _duration(next_in) if next_in is not None else "—",
        "renewals": state.renewals,
        "logins": state.logins,
        "last_error": state.last_error,
    }


def status_context(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    stats: OpsStats = request.app[OPS_STATS]
    now = time.time()
    rows = stats.per_minute()
    return {
        "generated": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "vault_addr": safe_url(settings.vault_addr),
        "vault_namespace": settings.vault_namespace,
        "vault": vault_status(request),
        "token": token_status(request),
        "auth_methods": list(request.app[AUTH].methods),
        "rate_limit": {
            "enabled": settings.rate_limit_enabled,
            "requests": settings.rate_limit_requests,
            "window": f"{settings.rate_limit_window_seconds:g}s",
            "backend": getattr(settings, "rate_limit_backend", "memory"),
        },
        "audit": "off" if not settings.audit_log else ("stdout" if settings.audit_log == "stdout" else "file"),
        "minutes": stats.minutes,
        "agents": [{"agent": a.agent, "requests": a.requests, "rejections": a.rejections, "errors": a.errors,
                    "last_seen": _ago(a.last_seen, now),
                    "quarantined": request.app[QUARANTINE].is_quarantined(a.agent)} for a in stats.agents()],
        "errors": [{"at": datetime.fromtimestamp(e.at, UTC).strftime("%H:%M:%S"), "status": e.status,
                    "code": e.code, "route": e.route, "request_id": e.request_id}
                   for e in stats.recent_errors()],
        "chart": chart(rows),
        "total_requests": stats.total,
        "quarantined": [{"agent": e.agent, "since": datetime.fromtimestamp(e.since, UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"), "reason": e.reason, "actor": e.actor}
            for e in request.app[QUARANTINE].entries()],
    }


async def status_handler(request: web.Request) -> web.Response:
    if not status_allowed(request):
        raise ForbiddenError("The status page is only served to STATUS_ALLOWED_NETWORKS or with an admin "
                             "X-API-Key (ADMIN_API_KEYS).", code="status_forbidden")
    cookie, fresh = _csrf_cookie(request)
    context = status_context(request)
    context["csrf"] = csrf_token(request.app[STATUS_CSRF_KEY], cookie)
    response = aiohttp_jinja2.render_template("status.html", request, context)
    if fresh:
        response.set_cookie(CSRF_COOKIE, cookie, path="/status", httponly=True, samesite="Strict",
                            secure=request.secure)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
