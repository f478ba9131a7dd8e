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
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bridge.auth.mtls import PROXY_SECRET_HEADER
from bridge.errors import ForbiddenError
from bridge.keys import AUTH, KEEPER, METRICS, OPS_STATS, PROBE, SETTINGS
from bridge.logging import safe_url
from bridge.ops.metrics import metrics_handler
from bridge.ops.openapi import openapi_handler
from bridge.ops.stats import MinuteRow, OpsStats

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
    r.add_get("/openapi.json", openapi_handler(document), name="openapi")
    return frozenset({"metrics", "status", "openapi"})


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
    presented = request.headers.get("X-API-Key", "")
    if presented and settings.admin_api_keys:
        matches = [hmac.compare_digest(presented.encode(), k.get_secret_value().encode())
                   for k in settings.admin_api_keys]
        return any(matches)
    return False


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
                    "last_seen": _ago(a.last_seen, now)} for a in stats.agents()],
        "errors": [{"at": datetime.fromtimestamp(e.at, UTC).strftime("%H:%M:%S"), "status": e.status,
                    "code": e.code, "route": e.route, "request_id": e.request_id}
                   for e in stats.recent_errors()],
        "chart": chart(rows),
        "total_requests": stats.total,
    }


async def status_handler(request: web.Request) -> web.Response:
    if not status_allowed(request):
        raise ForbiddenError("The status page is only served to STATUS_ALLOWED_NETWORKS or with an admin "
                             "X-API-Key (ADMIN_API_KEYS).", code="status_forbidden")
    response = aiohttp_jinja2.render_template("status.html", request, status_context(request))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
