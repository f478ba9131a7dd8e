"""The per-agent GCRA limiter.

- :func:`gcra` and :class:`MemoryRateLimiter` with an injected clock: burst, refill, cost, exact headers, the
  bucket bound over every interval, and memory that stays bounded with a million distinct agents.
- One test matrix run against both backends (memory, and Redis started on a free port): the same answers from
  the same calls, on the real clock (slow refill where exactness is asserted, fast refill where time is).
"""

from __future__ import annotations

import asyncio
import functools
import random
import shutil
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.ratelimit import MemoryRateLimiter, Quota, RateLimiter, gcra
from bridge.ratelimit_redis import RedisRateLimiter, connect
from devtools.devvault import free_port
from tests.support.servers import RedisServer


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def memory(requests: int, window: float, burst: int | None = None, *,
           max_keys: int = 100_000) -> tuple[MemoryRateLimiter, Clock]:
    clock = Clock()
    return MemoryRateLimiter(Quota(requests, window, burst or requests), clock=clock, max_keys=max_keys), clock


# -- the algorithm, on a fake clock ----------------------------------------------------------------------------

def test_full_bucket_admits_the_burst_then_refuses_with_exact_headers() -> None:
    rl, _ = memory(600, 60.0, burst=5)  # 10 per second, bursts of 5
    decisions = [rl.check("alice") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert [d.reset_after for d in decisions] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert decisions[-1].headers() == {"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "1"}
    refused = rl.check("alice")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.reset_after == pytest.approx(0.5)
    # on a refusal RateLimit-Reset names the same moment as Retry-After (whole seconds, at least 1)
    assert refused.headers() == {"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "1",
                                 "Retry-After": "1"}


def test_refill_is_continuous_one_token_per_interval() -> None:
    rl, clock = memory(60, 60.0, burst=3)  # one token a second
    assert all(rl.check("a").allowed for _ in range(3))
    assert not rl.check("a").allowed
    clock.now += 0.999
    refused = rl.check("a")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.001)
    clock.now += 0.001
    ok = rl.check("a")
    assert ok.allowed
    assert ok.remaining == 0
    clock.now += 2.5  # 2.5 tokens back: 2 whole ones
    assert rl.check("a").remaining == 1  # 2.5 - 1 = 1.5 left
    clock.now += 100  # a full bucket holds burst tokens, never more
    assert [rl.check("a").remaining for _ in range(4)] == [2, 1, 0, 0]


def test_reset_is_seconds_until_the_bucket_is_full_again() -> None:
    rl, clock = memory(10, 60.0)  # 6 s per token, burst 10
    for _ in range(4):
        last = rl.check("a")
    assert last.reset_after == pytest.approx(24.0)
    assert last.headers()["RateLimit-Reset"] == "24"
    clock.now += 6.0
    assert rl.check("a").reset_after == pytest.approx(24.0)  # one token back, one spent


def test_cost_is_charged_in_one_step() -> None:
    rl, _ = memory(100, 100.0)  # burst 100, one token a second
    ok = rl.check("a", cost=40)
    assert (ok.allowed, ok.remaining) == (True, 60)
    assert ok.reset_after == pytest.approx(40.0)
    refused = rl.check("a", cost=61)
    assert not refused.allowed
    assert refused.remaining == 60  # what is there, before this request
    assert refused.retry_after == pytest.approx(1.0)  # one token short
    assert rl.check("a", cost=60).allowed  # a refusal consumed nothing
    assert not rl.check("a").allowed


def test_a_cost_larger_than_the_bucket_never_passes() -> None:
    rl, clock = memory(10, 10.0)
    clock.now += 1e6
    refused = rl.check("a", cost=11)
    assert not refused.allowed
    assert refused.remaining == 10


def test_per_identity_quota_on_the_same_limiter() -> None:
    rl, _ = memory(600, 60.0)
    own = Quota(2, 60.0, 2)
    assert [rl.check("a", own).allowed for _ in range(3)] == [True, True, False]
    assert rl.check("b").remaining == 599  # the default quota for everyone else


def test_agents_have_their_own_buckets() -> None:
    rl, _ = memory(1, 60.0)
    assert rl.check("alice").allowed
    assert not rl.check("alice").allowed
    assert rl.check("bob").allowed


def test_an_uneven_interval_still_admits_exactly_the_burst() -> None:
    # 7 per 60 s: the interval (8.571… s) is not exact in binary; the slack keeps a full bucket whole
    rl, clock = memory(7, 60.0)
    assert [rl.check("a").allowed for _ in range(8)] == [True] * 7 + [False]
    clock.now += 60.0
    assert [rl.check("a").allowed for _ in range(8)] == [True] * 7 + [False]
    rl2, _ = memory(7, 60.0)
    assert rl2.check("a", cost=7).allowed


@pytest.mark.parametrize("seed", range(5))
def test_the_bucket_bound_holds_over_every_interval(seed: int) -> None:
    """Property: in any interval of length t, at most burst + t / interval tokens are admitted."""
    rng = random.Random(seed)
    quota = Quota(12, 6.0, 5)  # 2 per second, bursts of 5
    rl = MemoryRateLimiter(quota, clock=lambda: t)
    admitted: list[tuple[float, int]] = []
    t = 0.0
    for _ in range(3000):
        t += rng.expovariate(6.0)
        cost = rng.choice((1, 1, 1, 2, 3))
        if rl.check("x", cost=cost).allowed:
            admitted.append((t, cost))
    assert sum(c for _, c in admitted) > 12 * (t / 6.0) * 0.9  # the limiter does admit its rate
    for i, (start, _) in enumerate(admitted):
        spent = 0
        for when, cost in admitted[i:]:
            spent += cost
            assert spent <= quota.burst + (when - start) / quota.interval + 1e-6


def test_gcra_is_a_pure_function_of_tat_and_now() -> None:
    quota = Quota(10, 10.0, 10)
    decision, tat = gcra(None, 50.0, quota, 3)
    assert (decision.allowed, decision.limit, decision.remaining, decision.retry_after) == (True, 10, 7, 0.0)
    assert decision.reset_after == pytest.approx(3.0)
    assert tat == pytest.approx(53.0)
    refused, unchanged = gcra(60.0, 50.0, quota, 1)  # a TAT 10 s ahead: the bucket is empty
    assert not refused.allowed
    assert unchanged is None


async def test_hit_is_the_async_protocol_method() -> None:
    rl, _ = memory(1, 60.0)
    assert (await rl.hit("a")).allowed
    assert not (await rl.hit("a")).allowed


def test_headers_never_show_float_noise() -> None:
    # (a + 60) - a is not 60.0 for every a; the headers must still say 60, never 61
    for start in (262104.06388139605, 524269.67785078095, 16333.683232993002, 476.26864894989575):
        rl = MemoryRateLimiter(Quota(1, 60.0, 1), clock=functools.partial(float, start))
        first = rl.check("alice")
        assert first.headers()["RateLimit-Reset"] == "60"
        second = rl.check("alice")
        assert second.headers()["Retry-After"] == "60"
        assert second.headers()["RateLimit-Reset"] == "60"


# -- memory stays bounded ----------------------------------------------------------------------------------------

def test_idle_agents_expire() -> None:
    rl, clock = memory(10, 10.0)
    for i in range(1000):
        rl.check(f"agent{i}")
    assert len(rl) == 1000
    clock.now += 1.0  # every bucket is full again (one token each, refilled in 1 s)
    for _ in range(20):
        rl.check("busy")
    assert len(rl) == 1  # an idle agent's entry is dropped once its bucket is full: it means nothing
    assert rl.check("agent7").remaining == 9  # and it comes back with a full bucket, as if never seen


def test_a_million_distinct_agents_keep_memory_bounded() -> None:
    cap = 10_000
    rl, clock = memory(600, 60.0, max_keys=cap)
    most = 0
    for i in range(1_000_000):
        rl.check(f"agent-{i}")
        clock.now += 1e-6  # all within one window: no entry has expired by itself
        if i % 1000 == 0:
            most = max(most, len(rl))
    assert most == len(rl) == cap  # the hard cap: the longest-idle agents were evicted
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):  # 100,000 more agents, traced: the map at its cap does not grow
            rl.check(f"more-{i}")
            clock.now += 1e-6
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # unbounded, 100,000 entries take about 17 MB; at the cap only the map's own table churns (about 1.6 MB)
    assert grown < 4 * 1024 * 1024, grown
    assert rl.check("more-99999").remaining == 598  # the most recent ones kept their state
    assert rl.check("agent-999999").remaining == 599  # the longest-idle was evicted: a fresh, full bucket


def test_the_cap_evicts_the_longest_idle_agent_not_a_busy_one() -> None:
    rl, clock = memory(600, 60.0, max_keys=3)
    for name in ("a", "b", "c"):
        rl.check(name)
        clock.now += 0.001
    rl.check("a")  # a is busy again: b is now the longest idle
    rl.check("d")
    assert rl.check("a").remaining == 597  # kept (three requests)
    assert rl.check("b").remaining == 599  # evicted, so new


# -- the shared matrix: memory and Redis give the same answers ---------------------------------------------------

@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make sysdeps installs it)")
    server = RedisServer(free_port(), Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    default = Quota(5, 3600.0, 5)
    if request.param == "memory":
        yield MemoryRateLimiter(default)
        return
    url = request.getfixturevalue("redis_url")
    limiter = RedisRateLimiter(connect(url, timeout=2.0), default, prefix=f"m{time.time_ns()}:")
    try:
        yield limiter
    finally:
        await limiter.close()


async def test_matrix_burst_then_refusal(backend: RateLimiter) -> None:
    # 5 per hour: nothing refills during the test, so every number is exact
    decisions = [await backend.hit("alice") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert [d.limit for d in decisions] == [5] * 5
    assert [d.headers()["RateLimit-Reset"] for d in decisions] == ["720", "1440", "2160", "2880", "3600"]
    refused = await backend.hit("alice")
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert 719.0 < refused.retry_after <= 720.0
    assert refused.headers() == {"RateLimit-Limit": "5", "RateLimit-Remaining": "0", "RateLimit-Reset": "720",
                                 "Retry-After": "720"}
    assert (await backend.hit("bob")).remaining == 4  # one bucket per agent


async def test_matrix_cost_and_refusals_consume_nothing(backend: RateLimiter) -> None:
    quota = Quota(10, 3600.0, 10)  # one token per 360 s
    ok = await backend.hit("carol", quota, 4)
    assert (ok.allowed, ok.remaining, ok.headers()["RateLimit-Reset"]) == (True, 6, "1440")
    refused = await backend.hit("carol", quota, 7)
    assert (refused.allowed, refused.remaining) == (False, 6)
    assert 359.0 < refused.retry_after <= 360.0
    assert refused.headers()["Retry-After"] == "360"
    again = await backend.hit("carol", quota, 6)
    assert (again.allowed, again.remaining) == (True, 0)
    assert not (await backend.hit("carol", quota, 1)).allowed
    assert not (await backend.hit("dave", quota, 11)).allowed  # more than the bucket: never


async def test_matrix_a_refund_gives_tokens_back_but_never_beyond_full(backend: RateLimiter) -> None:
    quota = Quota(10, 3600.0, 10)
    assert (await backend.hit("ivan", quota, 3)).remaining == 7
    back = await backend.hit("ivan", quota, -2)
    assert (back.allowed, back.remaining) == (True, 9)
    full = await backend.hit("ivan", quota, -5)
    assert (full.allowed, full.remaining, full.reset_after) == (True, 10, 0.0)
    assert (await backend.hit("ivan", quota, 10)).allowed  # exactly a full bucket, not more
    assert not (await backend.hit("ivan", quota, 1)).allowed


async def test_matrix_burst_setting_and_default_quota(backend: RateLimiter) -> None:
    smooth = Quota(5, 3600.0, 2)  # the same rate, bursts of 2 only
    assert [(await backend.hit("erin", smooth)).allowed for _ in range(3)] == [True, True, False]
    assert (await backend.hit("frank")).remaining == 4  # the limiter's default (5, burst 5)


async def test_matrix_refill_on_the_real_clock(backend: RateLimiter) -> None:
    """Retry-After is exact: waiting that long (and no more) always finds the token back."""
    quota = Quota(4, 1.0, 2)  # one token per 250 ms, bursts of 2
    first = [await backend.hit("gina", quota) for _ in range(2)]
    assert all(d.allowed for d in first)
    for _ in range(3):
        refused = await backend.hit("gina", quota)
        if refused.allowed:  # a very slow machine: the token came back already
            continue
        assert 0 < refused.retry_after <= 0.25 + 1e-6
        await asyncio.sleep(refused.retry_after + 0.002)
        assert (await backend.hit("gina", quota)).allowed


async def test_matrix_an_uneven_rate_admits_the_whole_burst(backend: RateLimiter) -> None:
    quota = Quota(7, 3600.0, 7)
    assert (await backend.hit("hugo", quota, 7)).allowed
    assert not (await backend.hit("hugo", quota)).allowed
