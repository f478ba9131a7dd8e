"""``X-API-Key`` authentication. Keys are indexed by their SHA-256 and confirmed in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from aiohttp import web

from bridge.auth.identity import Identity, normalize_subject
from bridge.config import ApiKeyEntry
from bridge.errors import UnauthenticatedError

HEADER = "X-API-Key"


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyAuthenticator:
    method = "api_key"

    def __init__(self, keys: Mapping[str, ApiKeyEntry]) -> None:
        self._by_digest: dict[bytes, ApiKeyEntry] = {}
        for key, entry in keys.items():
            digest = bytes.fromhex(key.removeprefix("sha256:")) if key.startswith("sha256:") else key_digest(key)
            self._by_digest[digest] = entry

    def present(self, request: web.Request) -> bool:
        return HEADER in request.headers

    def authenticate(self, request: web.Request) -> Identity | None:
        presented = request.headers.get(HEADER)
        if presented is None:
            return None
        digest = key_digest(presented)
        entry = self._by_digest.get(digest)
        # Compare even on a miss so hit and miss cost the same.
        ok = hmac.compare_digest(digest, digest if entry is not None else b"\0" * 32)
        if entry is None or not ok:
            raise UnauthenticatedError("The API key is not valid.")
        return Identity(normalize_subject(entry.agent, "api_key"), "api_key", frozenset(entry.scopes))
