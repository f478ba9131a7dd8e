"""The first checks every request passes, on every route, before authentication: ``Host`` and ``Origin``.

Both defend against DNS rebinding: a web page on ``evil.example`` whose name the attacker re-points at the
bridge's address can make a browser send requests there, but the browser still says ``Host: evil.example``
and ``Origin: http://evil.example``.

- ``Host`` (421 ``invalid_host``): allowed are ``localhost``, ``127.0.0.1``, ``[::1]``, the bound ``HOST``
  (unless it is a wildcard address), the host of ``MCP_RESOURCE_URL``, and every ``ALLOWED_HOSTS`` entry.
  Ports: an entry without a port allows its host on any port (``localhost`` allows ``localhost:8089``); an entry
  with a port (``bridge.example:443``) allows exactly that port. A CIDR entry (``10.0.0.0/8``) allows any
  IP-literal ``Host`` in that network (probes and scrapers that reach a pod by its IP); ``*`` allows any
  ``Host`` (for deployments whose proxy checks it). A request without ``Host`` (HTTP/1.0) is not a browser's
  and passes; a malformed or repeated ``Host`` is refused.
- ``Origin`` (403 ``origin_not_allowed``): a request that carries one must carry an allowed one:
  ``MCP_ALLOWED_ORIGINS`` (exact ``scheme://host[:port]`` values) when set; otherwise any origin whose host is
  ``localhost``/``127.0.0.1``/``::1``, the bound ``HOST`` (unless a wildcard) or the host of ``MCP_RESOURCE_URL``.
  Requests without ``Origin`` (agents, curl) are unaffected. The request's own ``Host`` is never trusted for
  this: in a rebinding attack it carries the attacker's name too. Routes named in ``origin_exempt`` (the intake
  pages, whose form posts back to the bridge from the bridge's own page) skip this check and make their own:
  ``Origin`` and ``Sec-Fetch-Site`` must say same origin (the ``Host`` or ``INTAKE_PUBLIC_URL``), and the
  CSRF pair must match (bridge/intake/routes.py). A rebinding page gains nothing there: the ``Host`` check
  above still applies, and a submission needs the link (the capability) besides.

The middleware raises; the error middleware renders the refusal like any other (on ``/mcp`` a JSON-RPC error with
the message's id when it can be peeked, elsewhere the REST error body).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from dataclasses import dataclass

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from yarl import URL

from bridge.config import Settings, parse_host
from bridge.errors import BridgeError, ForbiddenError
from bridge.routing import Handler

log = structlog.get_logger("bridge.edge")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
MAX_REMEMBERED_HOSTS = 256
"""Allowed ``Host`` values remembered per app, so the policy is not parsed again on every request."""


class InvalidHostError(BridgeError):
    """421: the request's ``Host`` is not one this bridge answers for."""

    status = 421
    code = "invalid_host"


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The allowed ``Host`` values, built once from the settings."""

    any_host: bool
    names: frozenset[str]  # any port
    names_with_port: frozenset[tuple[str, int]]
    networks: tuple[Network, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy:
        names = set(LOCAL_HOSTS) | own_hosts(settings)
        with_port: set[tuple[str, int]] = set()
        networks: list[Network] = []
        any_host = False
        for entry in settings.allowed_hosts:
            if entry == "*":
                any_host = True
            elif "/" in entry:
                networks.append(ipaddress.ip_network(entry))
            else:
                parsed = parse_host(entry)
                assert parsed is not None  # validated in config
                host, port = parsed
                if port is None:
                    names.add(host)
                else:
                    with_port.add((host, port))
        return cls(any_host, frozenset(names), frozenset(with_port), tuple(networks))

    def allows(self, value: str) -> bool:
        """Whether a ``Host`` header value is allowed (see the module docstring for the port rule)."""
        if self.any_host:
            return True
        parsed = parse_host(value)
        if parsed is None:
            return False
        host, port = parsed
        if host in self.names or (port is not None and (host, port) in self.names_with_port):
            return True
        if self.networks:
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                return False
            return any(addr in net for net in self.networks)
        return False


def own_hosts(settings: Settings) -> set[str]:
    """The bound ``HOST`` (unless a wildcard) and the host of ``MCP_RESOURCE_URL``, lower-case, unbracketed."""
    own: set[str] = set()
    if settings.host not in WILDCARD_HOSTS:
        own.add(settings.host.lower().strip("[]"))
    if settings.mcp_resource_url:
        resource_host = URL(settings.mcp_resource_url).host
        if resource_host:
            own.add(resource_host.lower().strip("[]"))
    return own


def _normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _origin_host(origin: str) -> str | None:
    try:
        url = URL(origin)
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return url.host.lower().strip("[]")


def origin_policy(settings: Settings) -> Callable[[str], bool]:
    """Whether an ``Origin`` value is allowed (see the module docstring), built once from the settings."""
    if settings.mcp_allowed_origins:
        exact = frozenset(_normalize(o) for o in settings.mcp_allowed_origins)
        return lambda origin: _normalize(origin) in exact
    hosts = LOCAL_HOSTS | own_hosts(settings)

    def allowed(origin: str) -> bool:
        host = _origin_host(origin)
        return host is not None and host in hosts

    return allowed


def edge_middleware(settings: Settings, *, origin_exempt: Collection[str] = ()) -> Middleware:
    """The ``Host``/``Origin`` middleware; sits after the error renderer and before identity, so a bad ``Host`` is
    421 and a bad ``Origin`` 403, never 401. ``origin_exempt``: route names that check ``Origin`` themselves."""
    exempt = frozenset(origin_exempt)
    policy = HostPolicy.from_settings(settings)
    origin_ok = origin_policy(settings)
    allowed: set[str] = set()  # Host values seen allowed (clients send the same few on every request)

    def host_ok(value: str) -> bool:
        if value in allowed:
            return True
        if not policy.allows(value):
            return False
        if len(allowed) < MAX_REMEMBERED_HOSTS:
            allowed.add(value)
        return True

    @web.middleware
    async def host_origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        hosts = request.headers.getall(hdrs.HOST, [])
        if len(hosts) > 1 or (hosts and not host_ok(hosts[0])):
            log.warning("http.host.rejected", method=request.method, hosts=len(hosts))  # the value is not logged
            raise InvalidHostError(
                "This bridge does not answer for that Host (DNS-rebinding protection); an operator can add it "
                "to ALLOWED_HOSTS.")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not origin_ok(origin) and request.match_info.route.name not in exempt:
            log.warning("http.origin.rejected", method=request.method)
            raise ForbiddenError(
                "Origin not allowed: browser requests are accepted only from the origins in MCP_ALLOWED_ORIGINS "
                "(DNS-rebinding protection).", code="origin_not_allowed")
        return await handler(request)

    return host_origin_middleware


def same_origin_post(request: web.Request, *, also: Collection[str] = ()) -> bool:
    """A form POST of one of the bridge's own pages (the status page, intake links): the browser's
    ``Sec-Fetch-Site`` and ``Origin``, when it sends them, must name the page's own origin (``request.host``) or
    one of ``also`` (``host[:port]`` authorities, e.g. ``INTAKE_PUBLIC_URL``'s). A client that sends neither still
    needs the page's CSRF pair."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        netloc = URL(origin).raw_authority.lower()
    except ValueError:
        return False
    return bool(netloc) and (netloc == request.host.lower() or netloc in {a.lower() for a in also})
