"""``Authorization: Bearer`` JWT authentication (joserfc, from authlib's authors).

Only the configured algorithms are accepted (never ``none``). ``sub`` is required; ``exp``/``nbf`` are
checked with a small leeway; ``iss``/``aud`` when configured. Scopes come from ``scopes`` (a list) or
``scope`` (space-separated), else ``JWT_DEFAULT_SCOPES``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from bridge.auth.identity import Identity, normalize_subject
from bridge.config import SCOPES
from bridge.errors import UnauthenticatedError


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


class JwtAuthenticator:
    method = "jwt"

    def __init__(self, *, hs256_secret: str | None, issuer: str, audience: str,
                 default_scopes: list[str], leeway: float, max_bytes: int) -> None:
        self._key = OctKey.import_key(hs256_secret) if hs256_secret else None
        self._algorithms = ["HS256"]
        claims: dict[str, Any] = {"sub": {"essential": True}, "exp": {"essential": False}}
        if issuer:
            claims["iss"] = {"essential": True, "value": issuer}
        if audience:
            claims["aud"] = {"essential": True, "value": audience}
        self._registry = jwt.JWTClaimsRegistry(leeway=int(leeway), **claims)
        self._default_scopes = frozenset(default_scopes)
        self._max_bytes = max_bytes

    def present(self, request: web.Request) -> bool:
        return bearer_token(request) is not None

    def authenticate(self, request: web.Request) -> Identity | None:
        token = bearer_token(request)
        if token is None:
            return None
        if self._key is None:
            raise UnauthenticatedError("JWT authentication has no verification key configured.")
        if len(token) > self._max_bytes:
            raise UnauthenticatedError("The bearer token is too large.")
        try:
            decoded = jwt.decode(token, self._key, algorithms=self._algorithms)
            self._registry.validate(decoded.claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise UnauthenticatedError(f"The bearer token is not valid ({_reason(exc)}).") from None
        claims = decoded.claims
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise UnauthenticatedError("The bearer token has no 'sub' claim.")
        return Identity(normalize_subject(sub, "jwt"), "jwt", self._scopes(claims))

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = claims.get("scopes")
        if isinstance(raw, list):
            found = {str(s) for s in raw}
        elif isinstance(claims.get("scope"), str):
            found = set(str(claims["scope"]).split())
        else:
            return self._default_scopes
        return frozenset(s for s in found if s in SCOPES)


def _reason(exc: Exception) -> str:
    if isinstance(exc, JoseError):
        return exc.error
    return "malformed"
