"""The enabled authenticators, tried in a fixed order: API key, JWT, mTLS headers."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from bridge.auth.api_key import ApiKeyAuthenticator
from bridge.auth.identity import Identity
from bridge.auth.jwks import JwksCache
from bridge.auth.jwt import JwtAuthenticator
from bridge.auth.jwtcache import VerifiedTokenCache
from bridge.auth.mtls import MtlsHeaderAuthenticator
from bridge.auth.peercert import PeerCertAuthenticator
from bridge.config import Settings
from bridge.errors import UnauthenticatedError


class Authenticator(Protocol):
    method: str

    def authenticate(self, request: web.Request) -> Identity | None: ...


class AuthChain:
    def __init__(self, authenticators: list[Authenticator]) -> None:
        self.authenticators = authenticators

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

    async def resolve(self, request: web.Request) -> Identity:
        """:meth:`authenticate`, after the authenticators that need I/O first (a JWKS refresh for an unknown
        ``kid``) have prepared. The identity middleware calls this one."""
        for auth in self.authenticators:
            prepare = getattr(auth, "prepare", None)
            if prepare is not None:
                await prepare(request)
        return self.authenticate(request)

    def authenticate(self, request: web.Request) -> Identity:
        """The first identity in order. Every presented credential is checked, so a valid API key next to a
        forged JWT is still a 401: a presented, invalid credential is never outvoted by another one."""
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
    if settings.auth_api_key_enabled:
        chain.append(ApiKeyAuthenticator(settings.api_keys_json))
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
        ))
    if settings.tls_client_ca_file:
        # The bridge verified the client certificate itself (bridge.tls): its CN or SPIFFE ID is the agent.
        chain.append(PeerCertAuthenticator(spiffe_trust_domain=settings.mtls_spiffe_trust_domain))
    if settings.auth_mtls_enabled:
        chain.append(MtlsHeaderAuthenticator(
            identity_header=settings.mtls_identity_header, verify_header=settings.mtls_verify_header,
            cn_prefix=settings.mtls_subject_cn_prefix, trusted=settings.mtls_trusted_proxies,
        ))
    return AuthChain(chain)
