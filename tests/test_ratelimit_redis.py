"""The Redis rate limiter: one key per agent, shared by replicas, fail open or closed (its semantics are the
memory limiter's: the shared matrix in tests/test_ratelimit.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings
from bridge.keys import LIMITER
from bridge.ratelimit import Quota
from bridge.ratelimit_redis import RedisRateLimiter, connect
from tests.conftest import API_KEY_ALICE, API_KEY_BOB, API_KEYS
from tests.support.servers import BridgeProcess, RedisServer

ALICE = {"X-API-Key": API_KEY_ALICE}


async def test_one_key_per_agent_expiring_when_the_bucket_is_full(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, timeout=1.0)
    limiter = RedisRateLimiter(client, Quota(10, 100.0, 10), prefix="t1:")
    try:
        for _ in range(3):
            assert (await limiter.hit("a")).allowed
        assert await client.keys("t1:*") == [b"t1:gcra:a"]  # one string key, O(1) per agent
        ttl_ms = await client.pttl("t1:gcra:a")
        assert 30_000 - 2_000 < ttl_ms <= 31_000  # the bucket is full again in 30 s (3 tokens at 10 s each)
    finally:
        await limiter.close()


async def test_concurrent_hits_never_exceed_the_limit(redis_server: RedisServer) -> None:
    quota = Quota(25, 3000.0, 25)
    limiters = [RedisRateLimiter(connect(redis_server.url, timeout=1.0), quota, prefix="t2:") for _ in range(3)]
    try:
        decisions = await asyncio.gather(*(limiters[i % 3].hit("agent") for i in range(120)))
        assert sum(d.allowed for d in decisions) == 25
        # batches: the cost is charged atomically, never half
        more = await asyncio.gather(*(limiters[i % 3].hit("batch", cost=7) for i in range(12)))
        assert sum(d.allowed for d in more) == 3  # 3 x 7 = 21 of 25
    finally:
        for limiter in limiters:
            await limiter.close()


def _settings(redis_url: str, fail_mode: str, make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(rate_limit_backend="redis", redis_url=redis_url, rate_limit_fail_mode=fail_mode,
                         rate_limit_requests=5, rate_limit_window_seconds=30, redis_timeout=0.3)


@pytest.mark.integration
@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_redis_down_then_back(fail_mode: str, redis_server: RedisServer, aiohttp_client: Callable[..., Any],
                                    make_settings: Callable[..., Settings]) -> None:
    app = create_app(_settings(redis_server.url, fail_mode, make_settings))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    assert isinstance(app[LIMITER], RedisRateLimiter)
    resp = await client.get("/secrets", headers=ALICE)
    assert resp.status in (200, 404)
    assert resp.headers["RateLimit-Remaining"] == "4"
    redis_server.stop()
    t0 = time.monotonic()
    resp = await client.get("/secrets", headers=ALICE)
    assert time.monotonic() - t0 < 2.0
    if fail_mode == "open":
        assert resp.status in (200, 404)  # served, and logged
    else:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "rate_limiter_unavailable"
        assert resp.headers["Retry-After"] == "1"
    redis_server.start()  # same port, empty: recovers by itself on the next request
    deadline = time.monotonic() + 5
    while True:
        resp = await client.get("/secrets", headers=ALICE)
        if resp.status != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert resp.status in (200, 404)
    assert resp.headers["RateLimit-Remaining"] == "4"  # counted in the fresh Redis again


@pytest.mark.integration
async def test_two_bridge_processes_share_one_limit(
        redis_server: RedisServer, spawn_bridge: Callable[..., BridgeProcess], bao: Any) -> None:
    env = {
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.root_token,
        "API_KEYS_JSON": json.dumps(API_KEYS),
        "RATE_LIMIT_BACKEND": "redis",
        "REDIS_URL": redis_server.url,
        "RATE_LIMIT_REQUESTS": "10",
        "RATE_LIMIT_WINDOW_SECONDS": "600",  # one token back a minute: none during the test
        "REDIS_KEY_PREFIX": f"shared-{time.time_ns()}:",
    }
    one, two = await asyncio.gather(asyncio.to_thread(spawn_bridge, env), asyncio.to_thread(spawn_bridge, env))
    statuses: dict[str, list[int]] = {one.url: [], two.url: []}
    async with aiohttp.ClientSession() as session:

        async def hit(url: str, key: str) -> None:
            async with session.get(f"{url}/secrets", headers={"X-API-Key": key}) as resp:
                await resp.read()
                statuses[url].append(resp.status)

        # 30 concurrent requests for alice spread over both replicas; bob has his own budget
        await asyncio.gather(*(hit((one.url, two.url)[i % 2], API_KEY_ALICE) for i in range(30)))
        bob: list[int] = []
        for i in range(4):
            async with session.get(f"{(one.url, two.url)[i % 2]}/secrets", headers={"X-API-Key": API_KEY_BOB}) as r:
                bob.append(r.status)
    served = [s for url in statuses for s in statuses[url] if s != 429]
    assert len(served) == 10, statuses  # the combined limit, not 10 per replica
    assert all(s in (200, 404) for s in served)
    assert all(statuses[url].count(429) > 0 for url in statuses), "both replicas enforced the shared budget"
    assert all(s != 429 for s in bob)
