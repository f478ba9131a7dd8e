"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the MCP endpoint."""

from __future__ import annotations

from aiohttp import web

from bridge.config import SCOPES
from bridge.keys import SETTINGS

MCP_PATH = "/mcp"
WELL_KNOWN = "/.well-known/oauth-protected-resource"


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def resource_url(request: web.Request) -> str:
    """``MCP_RESOURCE_URL``, else this server's ``/mcp`` URL as the client reached it."""
    configured = request.app[SETTINGS].mcp_resource_url
    return configured or base_url(request) + MCP_PATH


def resource_metadata_url(request: web.Request) -> str:
    return base_url(request) + WELL_KNOWN + MCP_PATH


async def protected_resource(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not (settings.auth_jwt_enabled and settings.jwt_issuer):
        raise web.HTTPNotFound()
    return web.json_response({
        "resource": resource_url(request),
        "authorization_servers": [settings.jwt_issuer],
        "scopes_supported": list(SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": "Vault MCP Bridge",
    })


def setup_metadata_routes(app: web.Application) -> set[str]:
    app.router.add_get(WELL_KNOWN, protected_resource, name="oauth_protected_resource")
    app.router.add_get(WELL_KNOWN + MCP_PATH, protected_resource, name="oauth_protected_resource_mcp")
    return {"oauth_protected_resource", "oauth_protected_resource_mcp"}
