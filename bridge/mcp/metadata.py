"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the MCP endpoint.

Served when JWT auth is on and ``JWT_ISSUER`` is set (the issuer is the authorization server a client goes to
for a token), at ``/.well-known/oauth-protected-resource/mcp`` (RFC 9728 §3.1: the well-known segment goes
between the host and the resource's path) and, for clients that only try the root, at
``/.well-known/oauth-protected-resource``. ``resource`` is ``MCP_RESOURCE_URL`` (set it behind a proxy), else
this server's ``/mcp`` URL as the client reached it, provided its ``Host`` is a plain ``host[:port]`` (else the
bind address). 401 and insufficient-scope 403 challenges point here with ``resource_metadata``
(:class:`Challenges`): a raw ``Host`` never reaches a challenge or a document.
"""

from __future__ import annotations

import re

from aiohttp import web
from yarl import URL

from bridge.auth.api_key import CHALLENGE as API_KEY_CHALLENGE
from bridge.config import SCOPES, Settings
from bridge.routing import Handler

MCP_PATH = "/mcp"
WELL_KNOWN = "/.well-known/oauth-protected-resource"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_PORT_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?")
"""A DNS name, an IPv4 address or a bracketed IPv6 address, and an optional port: nothing that could close a
quoted string in a header or change a URL's meaning."""
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def bind_authority(settings: Settings) -> str:
    """``host:port`` of the configured bind address (``localhost`` for a wildcard or an odd ``HOST``)."""
    host = settings.host
    if host in _WILDCARDS or not HOST_PORT_RE.fullmatch(host if ":" not in host else f"[{host}]"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{settings.port}"


def base_url(settings: Settings, request: web.Request) -> str:
    """``scheme://host[:port]`` of this server: the origin of ``MCP_RESOURCE_URL`` when set, else the request's
    ``Host`` when it is a plain ``host[:port]``, else the bind address."""
    if settings.mcp_resource_url:
        return str(URL(settings.mcp_resource_url).origin())
    host = request.headers.get("Host", "")
    if len(host) > 262 or not HOST_PORT_RE.fullmatch(host):
        host = bind_authority(settings)
    return f"{request.scheme}://{host}"


def resource_url(settings: Settings, request: web.Request) -> str:
    """``MCP_RESOURCE_URL``, else this server's ``/mcp`` URL as the client reached it."""
    return settings.mcp_resource_url or base_url(settings, request) + MCP_PATH


def resource_metadata_url(settings: Settings, request: web.Request) -> str:
    """RFC 9728 §3.1: ``https://host/.well-known/oauth-protected-resource`` + the resource's path."""
    resource = URL(resource_url(settings, request))
    path = resource.path.rstrip("/")
    return str(resource.origin()) + WELL_KNOWN + path


class Challenges:
    """The ``WWW-Authenticate`` values of the bridge's 401 and insufficient-scope 403 answers. Every value in them
    is ours or built from ``MCP_RESOURCE_URL`` / a validated host, never a raw ``Host`` header."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._oauth = settings.auth_jwt_enabled and bool(settings.jwt_issuer)  # JWT with RFC 9728 metadata
        self._api_keys = settings.auth_api_key_enabled

    def bearer(self, request: web.Request, *, error: str | None = None, scope: str | None = None) -> str:
        """The ``Bearer`` challenge (JWT, insufficient scope), with the resource metadata when an issuer is set."""
        parts = ['Bearer realm="vault-mcp-bridge"']
        if error:
            parts.append(f'error="{error}"')
        if scope:
            parts.append(f'scope="{scope}"')
        if self._oauth:
            parts.append(f'resource_metadata="{resource_metadata_url(self._settings, request)}"')
        return ", ".join(parts)

    def unauthenticated(self, request: web.Request) -> str:
        """The 401 challenge. It names the scheme of the credential that failed: a wrong or repeated
        ``X-API-Key`` gets the ``ApiKey`` scheme, never ``Bearer`` (an MCP client reads a Bearer challenge as
        "start OAuth"); a bad bearer token gets ``Bearer error="invalid_token"``. Without any credential:
        ``Bearer`` with the RFC 9728 metadata when JWT with an issuer is configured (OAuth is then the way in),
        else ``ApiKey`` when API keys are enabled."""
        if "Authorization" in request.headers:
            return self.bearer(request, error="invalid_token")
        if "X-API-Key" in request.headers:
            return API_KEY_CHALLENGE
        if self._oauth or not self._api_keys:
            return self.bearer(request)
        return API_KEY_CHALLENGE


def protected_resource_handler(settings: Settings) -> Handler:
    """The RFC 9728 document (404 unless JWT with an issuer is configured)."""

    async def protected_resource(request: web.Request) -> web.Response:
        if not (settings.auth_jwt_enabled and settings.jwt_issuer):
            raise web.HTTPNotFound()
        resp = web.json_response({
            "resource": resource_url(settings, request),
            "authorization_servers": [settings.jwt_issuer],
            "scopes_supported": list(SCOPES),
            "bearer_methods_supported": ["header"],
            "resource_name": "Vault MCP Bridge",
        })
        # Public, credential-free metadata: browser-based MCP clients read it cross-origin.
        resp.headers["Access-Control-Allow-Origin"] = "*"
        return resp

    return protected_resource


def setup_metadata_routes(app: web.Application, settings: Settings) -> frozenset[str]:
    handler = protected_resource_handler(settings)
    app.router.add_get(WELL_KNOWN, handler, name="oauth_protected_resource")
    app.router.add_get(WELL_KNOWN + MCP_PATH, handler, name="oauth_protected_resource_mcp")
    return frozenset({"oauth_protected_resource", "oauth_protected_resource_mcp"})
