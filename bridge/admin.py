"""The operator's API (no agent operation): ``POST /admin/agents/{agent}:quarantine`` and ``:release``.

Only an ``X-API-Key`` listed in ``ADMIN_API_KEYS`` opens it (401 ``unauthenticated`` otherwise; without any admin
key configured the API is closed). The routes are public for the identity middleware (an admin key is no agent's
key) and check the key themselves, in constant time. ``vault-mcp-bridge quarantine`` (bridge/quarantine_cli.py)
and the status page's buttons use the same :class:`~bridge.quarantine.Quarantine`.
"""

from __future__ import annotations

from aiohttp import web

from bridge.errors import InvalidRequestError, UnauthenticatedError, from_vault_error
from bridge.keys import QUARANTINE, SETTINGS
from bridge.models import parse
from bridge.models_dynamic import QuarantineBody, QuarantineOut
from bridge.ops.status import admin_key
from bridge.quarantine import QuarantineResult, check_agent
from bridge.rest import read_json
from bridge.vault.errors import VaultError


def _actor(request: web.Request) -> str:
    actor = admin_key(request.app[SETTINGS], request.headers.get("X-API-Key", ""))
    if actor is None:
        raise UnauthenticatedError("The admin API needs an X-API-Key listed in ADMIN_API_KEYS.",
                                   headers={"WWW-Authenticate": 'ApiKey realm="vault-mcp-bridge-admin", '
                                                                'header="X-API-Key"'})
    return actor


async def _reason(request: web.Request) -> str:
    if not request.body_exists:
        return ""
    settings = request.app[SETTINGS]
    body = await read_json(request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth)
    return parse(QuarantineBody, body).reason or ""


def _answer(result: QuarantineResult) -> web.Response:
    entry = result.entry
    out = QuarantineOut(agent=result.agent, quarantined=result.quarantined, changed=result.changed,
                        since=int(entry.since) if entry is not None else None,
                        reason=entry.reason if entry is not None else None,
                        actor=entry.actor if entry is not None else None, leases_revoked=result.leases_revoked,
                        child_tokens_dropped=result.child_tokens_dropped)
    response = web.json_response(out.model_dump(mode="json", exclude_none=True))
    response.headers["Cache-Control"] = "no-store"
    return response


async def quarantine_handler(request: web.Request) -> web.Response:
    actor = _actor(request)
    agent = _agent(request)
    reason = await _reason(request)
    try:
        result = await request.app[QUARANTINE].quarantine(agent, reason, actor)
    except VaultError as exc:
        raise from_vault_error(exc, what="the quarantine state") from None
    return _answer(result)


async def release_handler(request: web.Request) -> web.Response:
    actor = _actor(request)
    agent = _agent(request)
    await _reason(request)  # a body, if any, must be well-formed
    try:
        result = await request.app[QUARANTINE].release(agent, actor)
    except VaultError as exc:
        raise from_vault_error(exc, what="the quarantine state") from None
    return _answer(result)


def _agent(request: web.Request) -> str:
    raw = request.match_info["agent"]
    try:
        return check_agent(raw)
    except InvalidRequestError:
        raise InvalidRequestError("The agent id in the URL must match ^[a-z0-9][a-z0-9_-]{0,63}$.") from None


def setup_admin_routes(app: web.Application) -> frozenset[str]:
    """The admin routes (``app[QUARANTINE]`` must be set); returns their names (public: they check the admin key
    themselves)."""
    app.router.add_post("/admin/agents/{agent}:quarantine", quarantine_handler, name="admin_quarantine")
    app.router.add_post("/admin/agents/{agent}:release", release_handler, name="admin_release")
    return frozenset({"admin_quarantine", "admin_release"})
