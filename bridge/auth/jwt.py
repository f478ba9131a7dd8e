"""``Authorization: Bearer`` JWT authentication (joserfc, from authlib's authors).

Keys: HS256/384/512 with ``JWT_HS256_SECRET``; RS*/PS*/ES*/EdDSA (and its RFC 9864 name Ed25519) with the
public keys of a JWK Set (``JWT_JWKS_URL`` or ``JWT_JWKS_FILE``, see :mod:`bridge.auth.jwks`). Only the
algorithms of ``JWT_ALGORITHMS`` are accepted (never ``none``), and the key is chosen by the algorithm
family first: an HMAC algorithm is only ever checked with the configured secret and an asymmetric one only
with a JWKS key of the matching type and curve, so a token "signed" with a public key as HMAC secret
(algorithm confusion) fails. The ``kid`` header selects the JWKS key; ``jku``, ``x5u``, ``jwk`` and ``x5c``
headers are ignored, never fetched.

Strict by default: ``sub`` and ``exp`` are required; ``exp``, ``nbf`` and ``iat`` are checked with
``JWT_LEEWAY_SECONDS``; a token may live at most ``JWT_MAX_TTL`` (``exp`` no further than that from its
``iat``, nor from now); ``iss``/``aud`` when configured (both are required with a JWK Set; an ``aud`` list must
contain ``JWT_AUDIENCE``). Scopes come from ``scopes`` (a list) or ``scope`` (space-separated), else
``JWT_DEFAULT_SCOPES``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

from aiohttp import web
from joserfc import jws, jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import OctKey

from bridge.auth.identity import Identity, normalize_subject
from bridge.auth.jwks import JwksCache
from bridge.auth.jwtcache import VerifiedTokenCache
from bridge.config import SCOPES
from bridge.errors import UnauthenticatedError

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_VERIFIED = web.RequestKey("jwt_verified", tuple[str, Identity])
"""The bearer token :meth:`JwtAuthenticator.prepare` found in the verified-token cache, and its identity."""


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


def _header(token: str) -> dict[str, Any] | None:
    """The protected header, unverified (to pick the key); ``None`` when the token is not a compact JWS."""
    try:
        return dict(jws.extract_compact(token.encode()).headers())
    except (JoseError, ValueError, TypeError, UnicodeError):
        return None


class JwtAuthenticator:
    method = "jwt"
    headers: tuple[str, ...] = ("Authorization",)

    def __init__(self, *, hs256_secret: str | None, issuer: str, audience: str,
                 default_scopes: list[str], leeway: float, max_bytes: int,
                 algorithms: list[str] | None = None, jwks: JwksCache | None = None,
                 cache: VerifiedTokenCache | None = None, max_ttl: float = 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache  # verified tokens, until their exp (bridge/auth/jwtcache.py)
        self._key = OctKey.import_key(hs256_secret) if hs256_secret else None
        self._algorithms = frozenset(algorithms) if algorithms else frozenset({"HS256"})
        if "EdDSA" in self._algorithms:
            self._algorithms |= {"Ed25519"}  # RFC 9864's name for the same signatures
        self.jwks = jwks
        claims: dict[str, Any] = {"sub": {"essential": True}, "exp": {"essential": True}}
        if issuer:
            claims["iss"] = {"essential": True, "value": issuer}
        if audience:
            claims["aud"] = {"essential": True, "value": audience}
        self._clock = clock
        self._leeway = leeway
        self._max_ttl = max_ttl
        self._registry = jwt.JWTClaimsRegistry(now=lambda: int(clock()), leeway=int(leeway), **claims)
        self._default_scopes = frozenset(default_scopes)
        self._max_bytes = max_bytes

    def present(self, request: web.Request) -> bool:
        return bearer_token(request) is not None

    async def prepare(self, request: web.Request) -> None:
        """Before :meth:`authenticate`: refresh the JWK Set when the token names an unknown ``kid`` or the
        set is stale (rate-limited in :class:`JwksCache`). Never raises; a bad token fails afterwards. A token
        found in the verified-token cache is remembered on the request, so that :meth:`authenticate` does not
        hash it again."""
        token = bearer_token(request)
        if token is not None:
            hit = await self.prepare_token(token)
            if hit is not None:
                request[_VERIFIED] = (token, hit)

    async def prepare_token(self, token: str) -> Identity | None:
        """:meth:`prepare` for a token (``vault-mcp-bridge stdio`` reads it from a file); the token's identity when
        the verified-token cache has it."""
        if self.jwks is None or len(token) > self._max_bytes:
            return None
        if self.cache is not None and (cached := self.cache.get(token)) is not None:
            return cached
        header = _header(token)
        if header is None or header.get("alg") not in self._algorithms or header.get("alg") in HMAC_ALGORITHMS:
            return None
        kid = header.get("kid")
        if not isinstance(kid, str | None):
            return None
        if not self.jwks.knows(kid):
            await self.jwks.refresh(reason="unknown_kid")
        elif self.jwks.stale:
            await self.jwks.refresh(reason="stale")
        return None

    def authenticate(self, request: web.Request) -> Identity | None:
        token = bearer_token(request)
        if token is None:
            return None
        prepared: tuple[str, Identity] | None = request.get(_VERIFIED)
        if prepared is not None and prepared[0] == token:
            return prepared[1]  # a cache hit of this request's prepare, a moment ago
        return self.identity_of(token)

    def identity_of(self, token: str) -> Identity:
        """The identity of a verified token; :class:`UnauthenticatedError` for any token that is not valid."""
        if len(token) > self._max_bytes:
            raise UnauthenticatedError("The bearer token is too large.")
        if self.cache is not None and (cached := self.cache.get(token)) is not None:
            return cached
        header = _header(token)
        if header is None:
            raise UnauthenticatedError("The bearer token is not valid (malformed).")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise UnauthenticatedError("The bearer token is not valid (algorithm not allowed).")
        key: Any
        if alg in HMAC_ALGORITHMS:
            if self._key is None:
                raise UnauthenticatedError("JWT authentication has no verification key configured.")
            key = self._key
        else:
            kid = header.get("kid")
            found = self.jwks.find(kid, alg) if self.jwks is not None and isinstance(kid, str | None) else None
            if found is None:
                raise UnauthenticatedError("The bearer token is not valid (unknown signing key).")
            key = found
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA" is deprecated by name, not broken
                decoded = jwt.decode(token, key, algorithms=[alg])
            self._registry.validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(f"The bearer token is not valid ({_reason(exc)}).") from None
        claims = decoded.claims
        self._check_lifetime(claims)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnauthenticatedError("The bearer token has no 'sub' claim.")
        identity = Identity(normalize_subject(sub, "jwt"), "jwt", self._scopes(claims))
        if self.cache is not None:
            self.cache.put(token, identity, claims)
        return identity

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """``exp`` (already known to be a finite number in the future) at most ``JWT_MAX_TTL`` after ``iat`` and
        after now (plus the leeway for the issuer's clock): a leaked long-lived token is refused outright."""
        exp = float(claims["exp"])
        iat = claims.get("iat")
        if isinstance(iat, int | float) and not isinstance(iat, bool) and exp - float(iat) > self._max_ttl:
            raise UnauthenticatedError("The bearer token is not valid (it lives longer than JWT_MAX_TTL).")
        if exp - self._clock() > self._max_ttl + self._leeway:
            raise UnauthenticatedError("The bearer token is not valid (exp is further away than JWT_MAX_TTL).")

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = claims.get("scopes")
        if isinstance(raw, list):
            found = {str(s) for s in raw}
        elif isinstance(raw, str):  # some issuers send the list claim as a space-separated string
            found = set(raw.split())
        elif isinstance(claims.get("scope"), str):
            found = set(str(claims["scope"]).split())
        else:
            return self._default_scopes
        return frozenset(s for s in found if s in SCOPES)


def _reason(exc: Exception) -> str:
    if isinstance(exc, JoseError):
        return exc.error
    return "malformed"
