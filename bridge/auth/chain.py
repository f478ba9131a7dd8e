"""The enabled authenticators, tried in a fixed order: API key, JWT, client certificate (native TLS, then the
proxy's headers); and the checks around them: a credential header sent twice is refused (never "first
wins"), and failed authentication is throttled per source address (:mod:`bridge.auth.throttle`)."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from bridge.auth.api_key import ApiKeyAuthenticator
from bridge.auth.identity import Identity
from bridge.auth.jwks import JwksCache
from bridge.auth.jwt import JwtAuthenticator
from bridge.auth.jwtcache import VerifiedTokenCache
from bridge.auth.keyfile import ApiKeyFile
from bridge.auth.mtls import MtlsHeaderAuthenticator, TrustedProxy, peer_address
from bridge.auth.peercert import PeerCertAuthenticator
from bridge.auth.throttle import AuthFailureThrottle, source_key
from bridge.config import Settings
from bridge.errors import RateLimitedError, UnauthenticatedError


class Authenticator(Protocol):
    method: str
    headers: tuple[str, ...]  # the request headers that carry its credential

    def authenticate(self, request: web.Request) -> Identity | None: ...


class AuthChain:
    def __init__(self, authenticators: list[Authenticator], *, throttle: AuthFailureThrottle | None = None,
                 api_keys_file: ApiKeyFile | None = None, proxy: TrustedProxy | None = None) -> None:
        self.authenticators = authenticators
        self.throttle = throttle
        self.api_keys_file = api_keys_file  # its watcher task runs in bridge.app's cleanup_ctx
        self.credential_headers: tuple[str, ...] = tuple(dict.fromkeys(
            name for auth in authenticators for name in auth.headers))
        self._proxy = proxy
        # What counts as "a credential was presented" for the throttle: not the headers the proxy adds to every
        # request it relays (its secret, its verify result), only a key, a token or a certificate.
        relay = {h for a in authenticators if isinstance(a, MtlsHeaderAuthenticator) for h in a.relay_headers}
        self._evidence_headers = tuple(h for h in self.credential_headers if h not in relay)

    @property
    def methods(self) -> list[str]:
        return [a.method for a in self.authenticators]

    @property
    def jwks(self) -> JwksCache | None:
        """The JWT authenticator's key set, if it has one (started by ``bridge.app.jwks_ctx``)."""
        for auth in self.authenticators:
            if isinstance(auth, JwtAuthenticator) and auth.jwks is not None:
                return auth.jwks
        return None

    def source(self, request: web.Request) -> str:
        """Whom a failed authentication is counted against (:mod:`bridge.auth.throttle`): the direct peer, or
        the client address the configured proxy appended to ``X-Forwarded-For`` when the request provably came
        through that proxy (``MTLS_TRUSTED_PROXIES`` and ``MTLS_PROXY_SECRET`` set, with or without header
        identity)."""
        if self._proxy is not None and self._proxy.relayed(request):
            forwarded = request.headers.getall("X-Forwarded-For", [])
            last = forwarded[-1].rsplit(",", 1)[-1].strip() if forwarded else ""
            if last:
                return source_key(last)
        peer = peer_address(request)
        return source_key(str(peer)) if peer is not None else "unknown"

    def presented(self, request: web.Request) -> bool:
        """Whether the request carries a credential of an enabled method (key, token or certificate)."""
        return any(name in request.headers for name in self._evidence_headers)

    async def resolve(self, request: web.Request) -> Identity:
        """:meth:`authenticate`, after the authenticators that need I/O first (a JWKS refresh for an unknown
        ``kid``) have prepared, inside the failed-authentication throttle. The identity middleware calls this
        one."""
        throttle = self.throttle
        source: str | None = None
        if throttle is not None and len(throttle):  # nobody failing: the hot path skips the address work
            source = self.source(request)
            if (wait := throttle.retry_after(source)) is not None:
                raise RateLimitedError(
                    "Too many failed authentication attempts from this address; retry after the Retry-After "
                    "seconds.", code="too_many_auth_failures", headers={"Retry-After": str(wait)})
        try:
            for auth in self.authenticators:
                prepare = getattr(auth, "prepare", None)
                if prepare is not None:
                    await prepare(request)
            return self.authenticate(request)
        except UnauthenticatedError:
            if throttle is not None and self.presented(request):
                throttle.failed(source if source is not None else self.source(request))
            raise

    def authenticate(self, request: web.Request) -> Identity:
        """The first identity in order. Every presented credential is checked, so a valid API key next to a
        forged JWT is still a 401: a presented, invalid credential is never outvoted by another one. A
        credential header sent more than once is a 401 whatever the copies say."""
        for name in self.credential_headers:
            if len(request.headers.getall(name, [])) > 1:
                raise UnauthenticatedError(f"The {name} header was sent more than once; send each credential "
                                           "header exactly once.")
        found: Identity | None = None
        for auth in self.authenticators:
            identity = auth.authenticate(request)  # raises on a presented, invalid credential
            if found is None:
                found = identity
        if found is not None:
            return found
        raise UnauthenticatedError(
            "Authentication required: send an X-API-Key header, an Authorization: Bearer JWT, or a "
            "client certificate (enabled here: " + ", ".join(self.methods or ["none"]) + ")."
        )


def build_auth_chain(settings: Settings) -> AuthChain:
    chain: list[Authenticator] = []
    api_keys_file = None
    if settings.auth_api_key_enabled:
        api_keys = ApiKeyAuthenticator(settings.api_keys_json)
        chain.append(api_keys)
        if settings.api_keys_file:
            api_keys_file = ApiKeyFile(settings.api_keys_file, api_keys)
    if settings.auth_jwt_enabled:
        secret = settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else None
        jwks = None
        if settings.jwt_jwks_url or settings.jwt_jwks_file:
            jwks = JwksCache(url=settings.jwt_jwks_url, file=settings.jwt_jwks_file,
                             max_age=settings.jwt_jwks_cache_seconds,
                             min_refresh=settings.jwt_jwks_min_refresh_seconds, timeout=settings.jwt_jwks_timeout)
        chain.append(JwtAuthenticator(
            hs256_secret=secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
            default_scopes=settings.jwt_default_scopes, leeway=settings.jwt_leeway_seconds,
            max_bytes=settings.jwt_max_bytes, algorithms=settings.jwt_allowed_algorithms, jwks=jwks,
            cache=VerifiedTokenCache(settings.jwt_cache_seconds, settings.jwt_cache_size),
            max_ttl=settings.jwt_max_ttl,
        ))
    if settings.tls_client_ca_file:
        # The bridge verified the client certificate itself (bridge.tls): its CN or SPIFFE ID is the agent.
        chain.append(PeerCertAuthenticator(spiffe_trust_domain=settings.mtls_spiffe_trust_domain))
    proxy = None
    if settings.mtls_trusted_proxies and settings.mtls_proxy_secret is not None:
        proxy = TrustedProxy(settings.mtls_trusted_proxies, settings.mtls_proxy_secret.get_secret_value())
    if settings.auth_mtls_enabled and proxy is not None:  # the settings check requires both with header identity
        chain.append(MtlsHeaderAuthenticator(
            cert_header=settings.mtls_cert_header, verify_header=settings.mtls_verify_header, proxy=proxy,
            spiffe_trust_domain=settings.mtls_spiffe_trust_domain,
        ))
    throttle = AuthFailureThrottle(settings.auth_failure_limit) if settings.auth_failure_limit > 0 else None
    return AuthChain(chain, throttle=throttle, api_keys_file=api_keys_file, proxy=proxy)
