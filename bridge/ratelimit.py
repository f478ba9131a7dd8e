"""Per-agent rate limiting: at most ``limit`` requests in any window of ``window`` seconds.

A sliding-window log (one timestamp per admitted request), so there is no burst at window edges: the limit
holds for every interval of length ``window``, not just aligned ones. The ``RateLimiter`` protocol lets a
shared backend (Redis, for many replicas) replace the in-memory one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until a slot frees (the oldest admitted request leaves the window)
    retry_after: float  # 0 when allowed

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(_ceil_seconds(self.reset_after)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, _ceil_seconds(self.retry_after)))
        return out


def _ceil_seconds(value: float) -> int:
    """Whole seconds, rounded up, ignoring float noise below a microsecond (60.0000000001 is 60)."""
    return math.ceil(round(value, 6))


class RateLimiter(Protocol):
    async def hit(self, key: str) -> Decision: ...


class MemoryRateLimiter:
    """In-process sliding-window log. Idle keys are swept so memory follows active agents only."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._log: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    def _sweep(self, now: float) -> None:
        horizon = now - self.window
        for key in [k for k, q in self._log.items() if not q or q[-1] <= horizon]:
            del self._log[key]
        self._next_sweep = now + self.window

    def check(self, key: str) -> Decision:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        q = self._log.get(key)
        if q is None:
            q = self._log[key] = deque()
        horizon = now - self.window
        while q and q[0] <= horizon:
            q.popleft()
        if len(q) >= self.limit:
            wait = self.window - (now - q[0])  # not q[0] + window - now: that can round above window
            return Decision(False, self.limit, 0, wait, wait)
        q.append(now)
        reset = self.window - (now - q[0])
        return Decision(True, self.limit, self.limit - len(q), reset, 0.0)

    async def hit(self, key: str) -> Decision:
        return self.check(key)
