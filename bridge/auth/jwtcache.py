"""A cache of verified JWTs: the same bearer token is verified once, then trusted until it expires.

An agent sends the same token on every request until it refreshes it; verifying an RS256 signature and the
claims costs far more than the rest of the request's auth. :class:`VerifiedTokenCache` remembers the
:class:`Identity` a token verified to, keyed by the SHA-256 of the token (the raw token is not kept), until
the earliest of:

- the token's own ``exp`` (no leeway: a cached token never outlives what a fresh check would accept
  without leeway),
- ``max_age`` seconds after it was verified (``JWT_CACHE_SECONDS``, default 60): bounds how long a token
  keeps working after its signing key left the JWK Set,
- eviction: at most ``max_entries`` tokens (oldest insertion first).

Only successful verifications are cached; a bad token is checked (and rejected) every time.
``max_age <= 0`` disables the cache.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from bridge.auth.identity import Identity


class VerifiedTokenCache:
    def __init__(self, max_age: float = 60.0, max_entries: int = 10_000, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_age > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Identity | None:
        if not self.enabled:
            return None
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        identity, until = entry
        if self._clock() >= until:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return identity

    def put(self, token: str, identity: Identity, claims: dict[str, Any]) -> None:
        """Remember a token that just verified; ``claims`` gives its ``exp`` (seconds since the epoch)."""
        if not self.enabled:
            return
        now = self._clock()
        until = now + self.max_age
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            until = min(until, float(exp))
        if until <= now:
            return
        key = self._key(token)
        self._entries[key] = (identity, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
