"""Per-agent rate limiting: GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp).

A :class:`Quota` is ``requests`` per ``window`` seconds with a bucket of ``burst`` tokens: a full bucket admits
``burst`` requests at once, and it refills continuously at one token per ``window / requests`` seconds. GCRA
keeps one number per agent, the *theoretical arrival time* (TAT): the moment the bucket will be full again. A
request of cost ``c`` is admitted when ``TAT + c*interval - burst*interval <= now``, and then moves the TAT on
by ``c*interval``. An agent whose TAT has passed holds a full bucket, the same as an agent never seen, so its
entry can be dropped: idle agents cost nothing.

:func:`gcra` is the whole algorithm as a pure function. :class:`MemoryRateLimiter` runs it over an in-process
map (bounded: idle entries expire, and past ``max_keys`` the longest-idle agent is evicted);
``bridge.ratelimit_redis`` runs the same arithmetic in one Lua script inside Redis, for replicas that share
one budget. Both answer a :class:`Decision` whose :meth:`Decision.headers` are the ``RateLimit-*`` fields.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

TOKEN_SLACK = 1e-6
"""Float noise allowance, in tokens: a bucket short of a whole token by less than this counts as holding it
(``600 / 7`` tokens per second cannot be added up exactly). The Lua script uses the same value."""


@dataclass(frozen=True, slots=True)
class Quota:
    """``requests`` per ``window`` seconds, in bursts of at most ``burst`` (the bucket's size)."""

    requests: int
    window: float
    burst: int

    def __post_init__(self) -> None:
        if self.requests < 1 or self.burst < 1 or not self.window > 0:
            raise ValueError("a quota needs requests >= 1, burst >= 1 and a window > 0")

    @property
    def interval(self) -> float:
        """Seconds per token (the emission interval)."""
        return self.window / self.requests


@dataclass(frozen=True, slots=True)
class Decision:
    """One admission decision of the limiter.

    ``limit`` is the bucket size (the burst), ``remaining`` the whole tokens left after this request (before it,
    when refused), ``reset_after`` the seconds until the bucket is full again, ``retry_after`` the seconds until
    this request would be admitted (0 when it was).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit`` (the burst), ``RateLimit-Remaining`` (whole tokens left) and ``RateLimit-Reset``
        (seconds until the bucket is full again); on a refusal also ``Retry-After``, and then ``RateLimit-Reset``
        names the same moment, as the IETF draft asks."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining)}
        if self.allowed:
            out["RateLimit-Reset"] = str(_ceil_seconds(self.reset_after))
        else:
            retry = str(max(1, _ceil_seconds(self.retry_after)))
            out["RateLimit-Reset"] = retry
            out["Retry-After"] = retry
        return out


def _ceil_seconds(value: float) -> int:
    """Whole seconds, rounded up, ignoring float noise below a microsecond (60.0000000001 is 60)."""
    return max(0, math.ceil(round(value, 6)))


def _tokens(span: float, interval: float) -> int:
    """Whole tokens in ``span`` seconds of refill."""
    return max(0, math.floor(span / interval + TOKEN_SLACK))


def gcra(tat: float | None, now: float, quota: Quota, cost: int = 1) -> tuple[Decision, float | None]:
    """Admit a request of ``cost`` tokens at ``now`` against a bucket whose TAT is ``tat`` (None: never seen).

    Returns the decision and the TAT to store (None when refused: a refusal consumes nothing). A negative cost
    gives tokens back (a refund; never beyond a full bucket) and is always admitted.
    """
    interval = quota.interval
    capacity = quota.burst * interval  # seconds of refill a full bucket holds
    if tat is None or tat < now:
        tat = now
    new_tat = tat + cost * interval
    if cost < 0:
        new_tat = max(now, new_tat)
    wait = new_tat - capacity - now  # > 0: this request would overdraw the bucket
    if wait > interval * TOKEN_SLACK:
        return Decision(False, quota.burst, _tokens(capacity - (tat - now), interval), tat - now, wait), None
    return Decision(True, quota.burst, _tokens(capacity - (new_tat - now), interval), new_tat - now, 0.0), new_tat


class RateLimiter(Protocol):
    """What the middleware needs: charge ``cost`` tokens to ``key`` under ``quota`` (None: the default)."""

    default: Quota

    async def hit(self, key: str, quota: Quota | None = None, cost: int = 1) -> Decision: ...


EXPIRE_PER_CALL = 64
"""At most this many idle entries are dropped per call: O(1) per request, and the map still drains (each call
adds at most one entry)."""


class MemoryRateLimiter:
    """GCRA over an in-process map ``agent -> TAT``, least recently used first.

    Memory follows the active agents: an entry whose bucket is full again is the same as no entry and is dropped
    from the idle end; ``max_keys`` is a hard cap past which the longest-idle agent is evicted (its bucket starts
    full again if it comes back, the only approximation, and only under more than ``max_keys`` busy agents).
    """

    def __init__(self, default: Quota, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.default = default
        self.max_keys = max_keys
        self._clock = clock
        self._tats: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def _expire(self, now: float) -> None:
        tats = self._tats
        for _ in range(EXPIRE_PER_CALL):
            if not tats:
                return
            key = next(iter(tats))
            if tats[key] > now:
                return
            del tats[key]

    def check(self, key: str, quota: Quota | None = None, cost: int = 1) -> Decision:
        now = self._clock()
        self._expire(now)
        tats = self._tats
        tat = tats.get(key)
        decision, new_tat = gcra(tat, now, quota or self.default, cost)
        if new_tat is not None:
            tats[key] = new_tat
        if key in tats:
            tats.move_to_end(key)  # most recently used
            if len(tats) > self.max_keys:
                tats.popitem(last=False)  # the longest-idle agent
        return decision

    async def hit(self, key: str, quota: Quota | None = None, cost: int = 1) -> Decision:
        return self.check(key, quota, cost)
