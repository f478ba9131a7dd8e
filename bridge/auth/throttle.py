"""Failed-authentication throttling per source address (``AUTH_FAILURE_LIMIT``, default 30 per minute).

A request that presents a credential and is refused (401) counts as one failure of its *source*; once a
source has used up its allowance, every request from it to a protected route is answered 429
``too_many_auth_failures`` with ``Retry-After``, before any credential is checked (so a guess can no longer
be confirmed), until the allowance has refilled. Requests without any credential do not count, nor do
public routes.

- The allowance is a token bucket (GCRA): ``limit`` failures at once, then one more every
  ``window / limit`` seconds. One float per source.
- The source is the direct TCP peer; an IPv6 peer counts as its /64 (one host usually holds a whole /64).
  A request relayed by the configured proxy (trusted peer *and* matching ``X-Proxy-Secret``, see
  :mod:`bridge.auth.mtls`) counts for the client address that proxy appended to ``X-Forwarded-For``: one
  attacker behind nginx must not lock every agent behind the same nginx out. Without that proof a
  forwarded header is never believed.
- Memory is bounded: at most ``max_sources`` sources are tracked (the least recently failing is forgotten
  first); an entry whose allowance has refilled is dropped when next seen.
- State is per process (like the memory rate limiter): with ``WORKERS=N`` or N replicas a source gets up to N
  times the allowance.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

log = structlog.get_logger("bridge.auth")

MAX_SOURCES = 65_536


def source_key(address: str) -> str:
    """The throttled unit for a client address: the IPv4 address, or the /64 of an IPv6 address."""
    try:
        addr = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class AuthFailureThrottle:
    """``limit`` failures per ``window`` seconds per source; ``clock`` is injectable for tests."""

    def __init__(self, limit: int, window: float = 60.0, *, max_sources: int = MAX_SOURCES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self._interval = window / limit
        self._clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()  # theoretical arrival time per source

    def __len__(self) -> int:
        return len(self._tat)

    def retry_after(self, source: str) -> int | None:
        """Seconds until ``source`` may try again, or ``None`` when it may now."""
        tat = self._tat.get(source)
        if tat is None:
            return None
        now = self._clock()
        if tat <= now:
            del self._tat[source]
            return None
        wait = tat - now - (self.window - self._interval)
        return max(1, math.ceil(wait)) if wait > 1e-9 else None

    def failed(self, source: str) -> None:
        """Count one failed authentication of ``source``."""
        now = self._clock()
        tat = max(self._tat.get(source, now), now) + self._interval
        self._tat[source] = tat
        self._tat.move_to_end(source)
        while len(self._tat) > self.max_sources:
            self._tat.popitem(last=False)
        if tat - now > self.window - self._interval + 1e-9:
            log.warning("auth.failures.throttled", source=source, limit=self.limit, window_seconds=self.window)
