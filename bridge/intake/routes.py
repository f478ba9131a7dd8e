"""The human-facing intake pages: ``GET /intake/{token}`` (the form) and ``POST /intake/{token}`` (store).

Plain HTML from aiohttp-jinja2 templates (``intake_form.html``, ``intake_message.html``), no JavaScript. Every
answer carries ``Cache-Control: no-store``, a Content-Security-Policy with ``default-src 'none'``,
``form-action 'self'`` and ``frame-ancestors 'none'`` (plus ``X-Frame-Options: DENY``), ``Referrer-Policy:
same-origin`` (the link never leaves in a ``Referer``; same-origin keeps the ``Origin`` of the form's own POST,
which ``no-referrer`` would turn into ``null``) and ``nosniff``. Inputs are password fields (text areas for
multi-line values) with ``autocomplete="off"``. A page never shows a submitted value, not even after an error.

A submission must come with the link's CSRF pair (cookie and hidden field, :mod:`bridge.intake.token`), from the
page's own origin when the browser says (``Origin``, ``Sec-Fetch-Site``); else 403 ``intake_csrf_failed``.

The routes need no identity (the link is the capability): the wiring lists the names :func:`setup_intake_routes`
returns among the public routes. Errors are rendered here, as pages, with their HTTP status: 404 invalid link,
410 expired or used, 403 CSRF, 400 form (shown again), and the writer's own (409 the secret changed, 503 Vault
unavailable: try again).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from bridge.config import Settings
from bridge.edge import same_origin_post
from bridge.errors import BridgeError, IntakeError, IntakeFormError
from bridge.intake.flow import LINK_BASE, IntakeFlow, IntakeWriter, used_error
from bridge.intake.store import IntakeStore
from bridge.intake.token import IntakeCodec, IntakeTicket
from bridge.keys import INTAKE, SETTINGS
from bridge.mcp.metadata import MCP_PATH, base_url
from bridge.routing import Handler

log = structlog.get_logger("bridge.intake")

COOKIE = "vmb_intake"
COOKIE_PATH = "/intake/"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")


def _secure(response: web.Response) -> web.Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _message(request: web.Request, status: int, heading: str, message: str, *, kind: str = "error",
             ticket: IntakeTicket | None = None) -> web.Response:
    context = {"heading": heading, "message": message, "kind": kind,
               "path": ticket.path if ticket else "", "agent": ticket.agent if ticket else ""}
    response = aiohttp_jinja2.render_template("intake_message.html", request, context, status=status)
    return _secure(response)


def _error_page(request: web.Request, err: BridgeError, ticket: IntakeTicket | None = None) -> web.Response:
    headings = {"intake_invalid": "Link not valid", "intake_expired": "Link expired", "intake_used": "Link used",
                "intake_cancelled": "Request withdrawn", "intake_csrf_failed": "Not sent from this page",
                "cas_mismatch": "The secret has changed", "audit_unavailable": "Stored, but not audited"}
    heading = headings.get(err.code, "Not stored")
    message = err.message
    if err.code == "audit_unavailable":
        message = ("The values were stored in Vault, but the bridge could not write its audit record. Tell whoever "
                   "runs the bridge; do not submit again.")
    elif err.code == "cas_mismatch":
        message = ("The secret was changed since the agent asked, so nothing was stored. Ask the agent for a new "
                   "link.")
    elif err.status >= 500 or err.status == 429:
        message = "Vault could not store the values just now; nothing was stored. Submit the form again in a moment."
    elif not isinstance(err, IntakeError):
        message = f"Nothing was stored: {err.message}"
    return _message(request, err.status, heading, message, ticket=ticket)


def _form(request: web.Request, ticket: IntakeTicket, *, status: int = 200, error: str = "") -> web.Response:
    flow = request.app[INTAKE]
    cookie = request.cookies.get(COOKIE) or ""
    fresh = len(cookie) < 32 or len(cookie) > 64
    if fresh:
        cookie = secrets.token_urlsafe(32)
    context = {"agent": ticket.agent, "path": ticket.path, "cas": ticket.cas, "fields": ticket.fields,
               "description": ticket.description, "error": error,
               "csrf": flow.codec.csrf_token(ticket, cookie),
               "expires": datetime.fromtimestamp(ticket.expires_at, UTC).strftime("%H:%M:%S UTC")}
    response = _secure(aiohttp_jinja2.render_template("intake_form.html", request, context, status=status))
    if fresh:
        secure = request.secure or flow.public_url.startswith("https://")
        response.set_cookie(COOKIE, cookie, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=secure,
                            max_age=max(1, int(ticket.expires_at - flow.codec.now())))
    return response


def _same_origin(request: web.Request, flow: IntakeFlow) -> bool:
    """The page's own origin, or ``INTAKE_PUBLIC_URL``'s (:func:`bridge.edge.same_origin_post`)."""
    return same_origin_post(request, also=(URL(flow.public_url).raw_authority,) if flow.public_url else ())


async def intake_form(request: web.Request) -> web.Response:
    flow = request.app[INTAKE]
    try:
        ticket, record = await flow.open(request.match_info["token"])
    except IntakeError as exc:
        return _error_page(request, exc)
    if record is not None:
        return _error_page(request, used_error(record), ticket)
    return _form(request, ticket)


async def intake_submit(request: web.Request) -> web.Response:
    flow = request.app[INTAKE]
    token = request.match_info["token"]
    try:
        ticket = flow.codec.verify(token)
    except IntakeError as exc:
        return _error_page(request, exc)
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not _same_origin(request, flow) or not flow.codec.csrf_ok(ticket, request.cookies.get(COOKIE),
                                                                 fields.get("csrf")):
        log.warning("intake.refused", code="intake_csrf_failed", agent=ticket.agent, path=ticket.path,
                    intake_id=ticket.intake_id)
        return _error_page(request, IntakeError(
            "The form was not sent from this link's own page (a missing or stale form token). Open the link "
            "again and submit from there.", code="intake_csrf_failed", status=403), ticket)
    try:
        ticket, stored = await flow.submit(token, fields)
    except IntakeFormError as exc:
        return _form(request, ticket, status=400, error=exc.message)
    except BridgeError as exc:
        return _error_page(request, exc, ticket)
    return _message(request, 200, "Stored",
                    f"The values are stored in Vault as version {stored.version}. The agent is told they are there, "
                    "never what they are.", kind="ok", ticket=ticket)


def setup_intake_routes(app: web.Application, *, store: IntakeStore | None = None, writer: IntakeWriter | None = None,
                        codec: IntakeCodec | None = None, flow: IntakeFlow | None = None) -> set[str]:
    """Add the intake pages; ``app[INTAKE]`` is the :class:`IntakeFlow`: ``flow`` (the app's, made by
    :class:`bridge.service.intake.IntakeService`), or one made of ``store``, ``writer`` and ``codec`` (default:
    from ``app[SETTINGS]``: ``INTAKE_SECRET`` / ``MCP_SESSION_SECRET``, ``INTAKE_TTL``). Returns the route
    names, which need no identity (and whose ``Origin`` the pages check themselves)."""
    settings = app[SETTINGS]
    if flow is None:
        if store is None or writer is None:
            raise ValueError("setup_intake_routes needs a flow, or a store and a writer")
        flow = IntakeFlow(codec or IntakeCodec.from_settings(settings), store, writer,
                          public_url=settings.intake_public_url)
    app[INTAKE] = flow
    if aiohttp_jinja2.APP_KEY not in app:
        aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("bridge", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    app.router.add_get("/intake/{token}", intake_form, name="intake_form", allow_head=False)
    app.router.add_post("/intake/{token}", intake_submit, name="intake_submit")
    return set(PAGE_ROUTES)


PAGE_ROUTES = frozenset({"intake_form", "intake_submit"})
"""The pages' route names: public (no identity), their ``Origin`` checked by the pages (:func:`_same_origin`)
instead of the edge's ``MCP_ALLOWED_ORIGINS``."""


def link_base(settings: Settings, request: web.Request) -> str:
    """Where links made in this request point when ``INTAKE_PUBLIC_URL`` is unset: ``MCP_RESOURCE_URL`` without
    its ``/mcp`` (a bridge behind a path prefix keeps it), else this server as the client reached it (a ``Host``
    the edge accepted, or the bind address)."""
    resource = settings.mcp_resource_url.rstrip("/")
    if resource.endswith(MCP_PATH):
        return resource[: -len(MCP_PATH)]
    return base_url(settings, request)


def link_base_middleware(settings: Settings) -> Middleware:
    """Sets :data:`~bridge.intake.flow.LINK_BASE` for the request (a context variable the intake service reads
    when it makes a link: the service knows no request)."""

    @web.middleware
    async def intake_link_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = LINK_BASE.set(link_base(settings, request))
        try:
            return await handler(request)
        finally:
            LINK_BASE.reset(token)

    return intake_link_middleware


__all__ = ["COOKIE", "PAGE_ROUTES", "link_base", "link_base_middleware", "setup_intake_routes"]
