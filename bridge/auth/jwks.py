"""Public keys for JWT verification: a JWK Set from ``JWT_JWKS_URL`` or ``JWT_JWKS_FILE``.

- Only public signing keys are kept: ``RSA``, ``EC`` and ``OKP`` (Ed25519) keys whose ``use`` is absent or
  ``sig``; symmetric (``oct``) keys are dropped, so an HMAC token can never be checked against a JWKS entry
  (algorithm confusion), and private members are discarded.
- The set is cached. It is fetched again when it is older than ``JWT_JWKS_CACHE_SECONDS`` or when a token
  names a ``kid`` the cache does not know (key rotation), but never more often than once per
  ``JWT_JWKS_MIN_REFRESH_SECONDS``, so tokens with made-up ``kid`` values cannot turn the bridge into a
  request amplifier. Concurrent refreshes share one fetch.
- Keys come only from the configured location: ``jku``/``x5u``/``jwk``/``x5c`` token headers are never
  followed or used. The URL is fetched without redirects, with a timeout and a size limit, and must be
  ``https`` unless it points at a loopback address.
- The HTTP session is owned by the app's ``cleanup_ctx`` (``bridge.app``), not by this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

log = structlog.get_logger("bridge.auth.jwks")

PublicKey = RSAKey | ECKey | OKPKey
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100

_KTY: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519", "Ed25519": "Ed25519"}


class JwksError(Exception):
    """The JWK Set could not be loaded or is not valid."""


def key_fits(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` can verify ``alg`` (key type and curve), before any cryptography is attempted."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    curve = _CURVE_FOR_ALG.get(alg)
    if curve is None:
        return False
    crv = key.as_dict(private=False).get("crv")
    if alg.startswith("ES"):
        return isinstance(key, ECKey) and crv == curve
    return isinstance(key, OKPKey) and crv == curve


def parse_jwks(document: Any) -> list[PublicKey]:
    """The usable public signing keys of a JWK Set document."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("a JWK Set is a JSON object with a 'keys' list")
    keys: list[PublicKey] = []
    for index, raw in enumerate(document["keys"][:MAX_KEYS]):
        if not isinstance(raw, dict):
            raise JwksError(f"key #{index + 1} is not an object")
        cls = _KTY.get(str(raw.get("kty")))
        if cls is None or raw.get("use", "sig") != "sig":
            continue  # oct (symmetric) keys and encryption keys are never used for verification
        try:
            key = cls.import_key(raw)
            public = key.as_dict(private=False)
            if raw.get("kid") is not None:
                public["kid"] = str(raw["kid"])
            keys.append(cls.import_key(public))
        except (JoseError, ValueError, TypeError) as exc:
            raise JwksError(f"key #{index + 1} is not a valid {raw.get('kty')} key ({type(exc).__name__})") from None
    return keys


def _url_allowed(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


class JwksCache:
    """The cached key set (see the module docstring). ``clock`` is injectable for tests."""

    def __init__(self, *, url: str = "", file: str = "", max_age: float = 300.0, min_refresh: float = 30.0,
                 timeout: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if bool(url) == bool(file):
            raise ValueError("give exactly one of url and file")
        if url and not _url_allowed(url):
            raise ValueError("JWT_JWKS_URL must be https (plain http only for a loopback address)")
        self.url = url
        self.file = file
        self.max_age = max_age
        self.min_refresh = min_refresh
        self.timeout = timeout
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._keys: list[PublicKey] = []
        self._loaded_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self.fetches = 0

    @property
    def keys(self) -> list[PublicKey]:
        return list(self._keys)

    def bind(self, session: aiohttp.ClientSession | None) -> None:
        """Use ``session`` for fetching (owned by the caller's ``cleanup_ctx``)."""
        self._session = session

    def find(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for a token header: by ``kid`` when given; without one only if exactly one key fits."""
        fitting = [k for k in self._keys if key_fits(k, alg)]
        if kid is not None:
            fitting = [k for k in fitting if k.kid == kid]
            return fitting[0] if fitting else None
        return fitting[0] if len(fitting) == 1 else None

    def knows(self, kid: str | None) -> bool:
        return kid is None or any(k.kid == kid for k in self._keys)

    @property
    def stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self.max_age

    async def refresh(self, *, reason: str) -> bool:
        """Load the set again unless one was attempted less than ``min_refresh`` seconds ago; ``True`` when
        new keys were loaded. Concurrent callers share one attempt."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self.min_refresh:
            return False
        self._last_attempt = now
        self._inflight = asyncio.create_task(self._load(reason), name="jwks-refresh")
        try:
            return await asyncio.shield(self._inflight)
        finally:
            self._inflight = None

    async def _load(self, reason: str) -> bool:
        try:
            document = await (self._fetch() if self.url else self._read_file())
            keys = parse_jwks(document)
        except JwksError as exc:
            log.warning("auth.jwks.load_failed", reason=reason, error=str(exc))
            return False
        self._keys = keys
        self._loaded_at = self._clock()
        self.fetches += 1
        log.info("auth.jwks.loaded", reason=reason, keys=len(keys), kids=[k.kid for k in keys][:20])
        return True

    async def _read_file(self) -> Any:
        try:
            raw = await asyncio.to_thread(Path(self.file).read_bytes)
        except OSError as exc:
            raise JwksError(f"cannot read JWT_JWKS_FILE ({exc.strerror})") from None
        return _decode(raw)

    async def _fetch(self) -> Any:
        if self._session is None:
            raise JwksError("no HTTP session (the app has not started)")
        try:
            async with self._session.get(self.url, allow_redirects=False, headers={"Accept": "application/json"},
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status != 200:
                    raise JwksError(f"JWT_JWKS_URL answered {resp.status}")
                if (resp.content_length or 0) > MAX_JWKS_BYTES:
                    raise JwksError("the JWK Set is too large")
                raw = await resp.content.read(MAX_JWKS_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksError(f"cannot fetch JWT_JWKS_URL ({type(exc).__name__})") from None
        if len(raw) > MAX_JWKS_BYTES:
            raise JwksError("the JWK Set is too large")
        return _decode(raw)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise JwksError("the JWK Set is not JSON") from None
