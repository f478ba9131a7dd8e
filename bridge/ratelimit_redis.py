"""A rate limiter shared by every replica: GCRA per agent in Redis, one key and one atomic Lua script.

Same semantics as :class:`bridge.ratelimit.MemoryRateLimiter` (the arithmetic of :func:`bridge.ratelimit.gcra`,
test matrix shared), but the TAT lives in Redis so that all replicas behind a load balancer charge the same
bucket:

- The script runs atomically inside Redis (no read-modify-write race between replicas) and takes the time
  from Redis' own clock (``TIME``), so replicas with skewed clocks still agree. Times are integer microseconds
  (exact in Lua's doubles); the reply is integers (Redis truncates Lua numbers), rounded up where it matters.
- One string key per agent (``<prefix>gcra:<agent>``) holding the TAT; it expires when the bucket is full
  again, so memory follows active agents only. (``gcra:`` keeps the keys apart from the sorted sets of the
  sliding-window limiter of earlier releases.)
- Redis unreachable: ``fail_mode="open"`` admits the request and logs (at most every 10 s);
  ``fail_mode="closed"`` answers 503 ``rate_limiter_unavailable``. Either way the next request tries Redis
  again (the client reconnects by itself), so service recovers without a restart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Literal

import structlog

from bridge.errors import RateLimiterUnavailableError
from bridge.ratelimit import TOKEN_SLACK, Decision, Quota

log = structlog.get_logger("bridge.ratelimit")

KEY_INFIX = "gcra:"

GCRA_LUA = """
local key = KEYS[1]
local interval = tonumber(ARGV[1])  -- microseconds per token (may be fractional)
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])     -- float-noise allowance, in tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity = burst * interval
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
if new_tat < now then new_tat = now end  -- a refund (negative cost) never fills beyond a full bucket
local wait = new_tat - capacity - now
local function tokens(span)
  local n = math.floor(span / interval + slack)
  if n < 0 then return 0 end
  return n
end
if wait > interval * slack then
  return {0, tokens(capacity - (tat - now)), math.ceil(tat - now), math.ceil(wait)}
end
local stored = math.ceil(new_tat)
if stored > now then
  redis.call('SET', key, string.format('%d', stored), 'PX', math.ceil((stored - now) / 1000) + 1000)
else
  redis.call('DEL', key)  -- full again: the same as no key
end
return {1, tokens(capacity - (new_tat - now)), math.ceil(new_tat - now), 0}
"""

LOG_EVERY = 10.0


class RedisRateLimiter:
    """The :class:`bridge.ratelimit.RateLimiter` protocol over Redis (``redis.asyncio``)."""

    def __init__(self, client: Any, default: Quota, *, prefix: str = "vmb:rl:",
                 fail_mode: Literal["open", "closed"] = "open",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self.default = default
        self._prefix = prefix + KEY_INFIX
        self.fail_mode = fail_mode
        self._clock = clock
        self._script = client.register_script(GCRA_LUA)
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._down_since: float | None = None
        self._last_log = -math.inf
        self.failures = 0

    async def hit(self, key: str, quota: Quota | None = None, cost: int = 1) -> Decision:
        quota = quota or self.default
        interval_us = quota.interval * 1_000_000
        try:
            allowed, remaining, reset_us, retry_us = await self._script(
                keys=[self._prefix + key], args=[repr(interval_us), quota.burst, cost, repr(TOKEN_SLACK)])
        except self._errors as exc:
            return self._unavailable(exc, quota, cost)
        if self._down_since is not None:
            log.info("ratelimit.backend.recovered", backend="redis",
                     down_seconds=round(self._clock() - self._down_since, 2))
            self._down_since = None
        return Decision(bool(int(allowed)), quota.burst, int(remaining), max(0, int(reset_us)) / 1_000_000,
                        max(0, int(retry_us)) / 1_000_000)

    def _unavailable(self, exc: BaseException, quota: Quota, cost: int) -> Decision:
        now = self._clock()
        self.failures += 1
        if self._down_since is None:
            self._down_since = now
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning("ratelimit.backend.unavailable", backend="redis", fail_mode=self.fail_mode,
                        error=type(exc).__name__, failures=self.failures)
        if self.fail_mode == "closed":
            raise RateLimiterUnavailableError(
                "The shared rate limiter is unavailable; retry shortly.", headers={"Retry-After": "1"})
        return Decision(True, quota.burst, max(0, quota.burst - cost), 0.0, 0.0)  # unknown: as if full

    async def close(self) -> None:
        await self._redis.aclose()


MAX_CONNECTIONS = 64
"""Redis connections per process: requests beyond it wait (within ``REDIS_TIMEOUT``) for a free one instead of
opening hundreds of sockets at once when a fleet starts (a burst of connects is what fails first under load)."""


def connect(url: str, *, timeout: float, max_connections: int = MAX_CONNECTIONS) -> Any:
    """A ``redis.asyncio`` client that fails within ``timeout``, from a bounded pool. A command is retried once,
    at once, only when its connection broke (a stale pooled socket, a reset while connecting); never on a timeout,
    so a slow Redis costs at most ``timeout`` before the fail mode decides."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("RATE_LIMIT_BACKEND=redis needs the 'redis' package: "
                           "pip install 'vault-mcp-bridge[redis]'") from exc
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
        socket_connect_timeout=timeout, health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def redis_limiter(url: str, default: Quota, *, timeout: float, prefix: str,
                  fail_mode: Literal["open", "closed"]) -> RedisRateLimiter:
    """The limiter over a fresh pool (no connection is made until the first request); ``close`` it at shutdown."""
    limiter = RedisRateLimiter(connect(url, timeout=timeout), default, prefix=prefix, fail_mode=fail_mode)
    log.info("ratelimit.backend", backend="redis", fail_mode=fail_mode)
    return limiter
