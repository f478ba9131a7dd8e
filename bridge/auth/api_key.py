"""``X-API-Key`` authentication. The SHA-256 of the presented key is compared with every configured key's
digest in constant time (``hmac.compare_digest``, no early exit)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from aiohttp import web

from bridge.auth.identity import Identity, normalize_subject
from bridge.config import ApiKeyEntry
from bridge.errors import ForbiddenError, UnauthenticatedError

HEADER = "X-API-Key"
CHALLENGE = f'ApiKey realm="vault-mcp-bridge", header="{HEADER}"'
"""``WWW-Authenticate`` of a 401 for an API-key client: it names the scheme, so that no MCP client reads it as
an OAuth challenge (a ``Bearer`` challenge sends the MCP Inspector and others into an OAuth flow)."""


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()  # header bytes as received


def hashed_form(key: str) -> str:
    """``sha256:<hex>``: how a key may sit in ``API_KEYS_JSON`` instead of the plaintext key."""
    return "sha256:" + key_digest(key).hex()


class ApiKeyAuthenticator:
    method = "api_key"
    headers: tuple[str, ...] = (HEADER,)

    def __init__(self, keys: Mapping[str, ApiKeyEntry]) -> None:
        self._table: tuple[tuple[tuple[bytes, ApiKeyEntry], ...], dict[bytes, Identity | None]] = ((), {})
        self.replace(keys)

    def __len__(self) -> int:
        return len(self._table[0])

    def replace(self, keys: Mapping[str, ApiKeyEntry]) -> None:
        """Use ``keys`` from now on (``API_KEYS_FILE`` reload). The new table is built first and swapped in with
        one assignment: a request sees either the old keys or the new ones, and a request already
        authenticated keeps its identity."""
        entries: list[tuple[bytes, ApiKeyEntry]] = []
        # The identity of each valid entry is built once; an entry whose agent breaks the subject rule stays
        # None and is refused (403 invalid_subject, logged) each time it is used.
        identities: dict[bytes, Identity | None] = {}
        for key, entry in keys.items():
            digest = bytes.fromhex(key.removeprefix("sha256:")) if key.startswith("sha256:") else key_digest(key)
            entries.append((digest, entry))
            try:
                identity: Identity | None = Identity(
                    normalize_subject(entry.agent, "api_key"), "api_key", frozenset(entry.scopes),
                    rate_limit=entry.rate_limit.quota() if entry.rate_limit else None)
            except ForbiddenError:
                identity = None
            identities[digest] = identity
        self._table = (tuple(entries), identities)

    def present(self, request: web.Request) -> bool:
        return HEADER in request.headers

    def authenticate(self, request: web.Request) -> Identity | None:
        presented = request.headers.get(HEADER)
        if presented is None:
            return None
        return self.identity_of(presented)

    def identity_of(self, presented: str) -> Identity:
        """The identity of a key (the header's value, or a key read from a file by ``vault-mcp-bridge stdio``);
        :class:`UnauthenticatedError` when it matches no configured key."""
        entries, identities = self._table
        digest = key_digest(presented)
        entry: ApiKeyEntry | None = None
        matched = b""
        # Compare against every configured key in constant time, without stopping at a match: the time
        # taken does not depend on which key (if any) matched, nor on how much of it did.
        for known, candidate in entries:
            if hmac.compare_digest(digest, known):
                entry, matched = candidate, known
        if entry is None:
            raise UnauthenticatedError("invalid API key: the X-API-Key header matches no key configured on this "
                                       "bridge.", headers={"WWW-Authenticate": CHALLENGE})
        identity = identities[matched]
        if identity is None:
            normalize_subject(entry.agent, "api_key")  # raises 403 invalid_subject and logs the warning
            raise AssertionError("unreachable: the subject was checked when the keys were loaded")
        return identity
