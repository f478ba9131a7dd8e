"""A rate limiter shared by every replica: one sliding-window log per agent in Redis, updated by one Lua script.

Same semantics as :class:`bridge.ratelimit.MemoryRateLimiter` (at most ``limit`` admitted requests in *any*
interval of ``window`` seconds, no burst at window edges), but the log is a sorted set in Redis so that all
replicas behind a load balancer count against the same budget:

- The script runs atomically inside Redis (no read-modify-write race between replicas) and takes the time
  from Redis' own clock (``TIME``), so replicas with skewed clocks still agree.
- One key per agent (``<prefix><agent>``), members are unique per admitted request, scores are microseconds;
  the key expires one window after its last admission, so memory follows active agents only.
- Redis unreachable: ``fail_mode="open"`` admits the request and logs (at most every 10 s);
  ``fail_mode="closed"`` answers 503 ``rate_limiter_unavailable``. Either way the next request tries Redis
  again (the client reconnects by itself), so service recovers without a restart.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import structlog
from aiohttp import web

from bridge.errors import RateLimiterUnavailableError
from bridge.ratelimit import Decision

log = structlog.get_logger("bridge.ratelimit")

SLIDING_WINDOW_LUA = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2])
local member = ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_us)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, member)
  count = count + 1
  allowed = 1
end
local reset_us = 0
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
if oldest[2] then
  reset_us = tonumber(oldest[2]) + window_us - now
end
redis.call('PEXPIRE', key, math.ceil(window_us / 1000) + 1000)
return {allowed, count, reset_us}
"""

LOG_EVERY = 10.0


class RedisRateLimiter:
    """The :class:`bridge.ratelimit.RateLimiter` protocol over Redis (``redis.asyncio``)."""

    def __init__(self, client: Any, limit: int, window: float, *, prefix: str = "vmb:rl:",
                 fail_mode: Literal["open", "closed"] = "open",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self.limit = limit
        self.window = window
        self._window_us = max(1, round(window * 1_000_000))
        self._prefix = prefix
        self.fail_mode = fail_mode
        self._clock = clock
        self._script = client.register_script(SLIDING_WINDOW_LUA)
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._replica = os.urandom(6).hex()
        self._seq = itertools.count()
        self._down_since: float | None = None
        self._last_log = -math.inf
        self.failures = 0

    async def hit(self, key: str) -> Decision:
        member = f"{self._replica}:{next(self._seq)}"
        try:
            allowed, count, reset_us = await self._script(
                keys=[self._prefix + key], args=[self.limit, self._window_us, member])
        except self._errors as exc:
            return self._unavailable(exc)
        if self._down_since is not None:
            log.info("ratelimit.backend.recovered", backend="redis",
                     down_seconds=round(self._clock() - self._down_since, 2))
            self._down_since = None
        reset = max(0.0, int(reset_us) / 1_000_000)
        if int(allowed):
            return Decision(True, self.limit, max(0, self.limit - int(count)), reset, 0.0)
        return Decision(False, self.limit, 0, reset, reset)

    def _unavailable(self, exc: BaseException) -> Decision:
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
        return Decision(True, self.limit, self.limit, self.window, 0.0)

    async def close(self) -> None:
        await self._redis.aclose()


def connect(url: str, *, timeout: float) -> Any:
    """A ``redis.asyncio`` client that fails within ``timeout`` and does not retry (the limiter decides)."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("RATE_LIMIT_BACKEND=redis needs the 'redis' package: "
                           "pip install 'vault-mcp-bridge[redis]'") from exc
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        health_check_interval=30)


async def redis_limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the Redis connection pool lives as long as the app."""
    from bridge.keys import LIMITER, SETTINGS

    settings = app[SETTINGS]
    assert settings.redis_url is not None
    limiter = RedisRateLimiter(connect(settings.redis_url.get_secret_value(), timeout=settings.redis_timeout),
                               settings.rate_limit_requests, settings.rate_limit_window_seconds,
                               prefix=settings.redis_key_prefix, fail_mode=settings.rate_limit_fail_mode)
    app[LIMITER] = limiter
    log.info("ratelimit.backend", backend="redis", fail_mode=settings.rate_limit_fail_mode)
    try:
        yield
    finally:
        await limiter.close()
