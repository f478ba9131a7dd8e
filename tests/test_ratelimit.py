"""The in-memory per-agent limiter, driven by an injected clock: a true sliding window, no burst at edges."""

from __future__ import annotations

import functools
import random

import pytest

from bridge.ratelimit import Decision, MemoryRateLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_admits_limit_then_refuses_with_retry_after() -> None:
    clock = Clock()
    rl = MemoryRateLimiter(3, 60.0, clock=clock)
    decisions = [rl.check("alice") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    clock.now += 10
    refused = rl.check("alice")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.retry_after == pytest.approx(50.0)
    headers = refused.headers()
    assert headers == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "50",
                       "Retry-After": "50"}


def test_allowed_decision_headers_have_no_retry_after() -> None:
    rl = MemoryRateLimiter(5, 60.0, clock=Clock())
    headers = rl.check("a").headers()
    assert headers == {"RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "60"}


def test_retry_after_is_at_least_one_second() -> None:
    assert Decision(False, 1, 0, 0.2, 0.2).headers()["Retry-After"] == "1"


def test_no_burst_at_the_window_edge() -> None:
    """A fixed window would admit 2 x limit around the boundary (end of one window + start of the next)."""
    clock = Clock(59.9)
    rl = MemoryRateLimiter(10, 60.0, clock=clock)
    assert all(rl.check("alice").allowed for _ in range(10))  # all at t=59.9
    for t in (60.0, 60.1, 90.0, 119.8):
        clock.now = t
        assert not rl.check("alice").allowed, t
    clock.now = 119.9  # exactly one window after the burst: the slots free again
    assert sum(rl.check("alice").allowed for _ in range(20)) == 10


def test_slots_free_one_by_one() -> None:
    clock = Clock(0.0)
    rl = MemoryRateLimiter(2, 10.0, clock=clock)
    assert rl.check("a").allowed  # t=0
    clock.now = 4.0
    assert rl.check("a").allowed  # t=4
    clock.now = 9.0
    refused = rl.check("a")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)
    clock.now = 10.0
    assert rl.check("a").allowed  # the t=0 request left the window
    assert not rl.check("a").allowed  # the t=4 one has not
    clock.now = 14.0
    assert rl.check("a").allowed


def test_refused_requests_do_not_consume_slots() -> None:
    clock = Clock(0.0)
    rl = MemoryRateLimiter(1, 10.0, clock=clock)
    assert rl.check("a").allowed
    for i in range(50):
        clock.now = 0.1 * i
        assert not rl.check("a").allowed
    clock.now = 10.0
    assert rl.check("a").allowed


def test_agents_are_limited_separately() -> None:
    rl = MemoryRateLimiter(1, 60.0, clock=Clock())
    assert rl.check("alice").allowed
    assert not rl.check("alice").allowed
    assert rl.check("bob").allowed


def test_idle_agents_are_swept() -> None:
    clock = Clock(0.0)
    rl = MemoryRateLimiter(5, 10.0, clock=clock)
    for i in range(100):
        rl.check(f"agent{i}")
    clock.now = 25.0
    rl.check("new")
    assert set(rl._log) == {"new"}


@pytest.mark.parametrize("seed", range(5))
def test_limit_holds_in_every_window(seed: int) -> None:
    """Property: over random arrival times, no interval of length ``window`` contains more than ``limit``
    admitted requests."""
    rng = random.Random(seed)
    limit, window = 7, 5.0
    clock = Clock(0.0)
    rl = MemoryRateLimiter(limit, window, clock=clock)
    admitted: list[float] = []
    t = 0.0
    for _ in range(2000):
        t += rng.expovariate(4.0)
        clock.now = t
        if rl.check("x").allowed:
            admitted.append(t)
    assert len(admitted) > limit * 10
    j = 0
    for i, start in enumerate(admitted):
        while j < len(admitted) and admitted[j] < start + window:
            j += 1
        assert j - i <= limit, f"{j - i} requests in [{start}, {start + window})"


async def test_hit_is_the_async_protocol_method() -> None:
    rl = MemoryRateLimiter(1, 60.0, clock=Clock())
    assert (await rl.hit("a")).allowed
    assert not (await rl.hit("a")).allowed


def test_reset_is_never_above_the_window_from_float_noise() -> None:
    # (a + 60) - a is not 60.0 for every a; the headers must still say 60, never 61
    for start in (262104.06388139605, 524269.67785078095, 16333.683232993002, 476.26864894989575):
        limiter = MemoryRateLimiter(1, 60.0, clock=functools.partial(float, start))
        first = limiter.check("alice")
        assert first.headers()["RateLimit-Reset"] == "60"
        second = limiter.check("alice")
        assert not second.allowed
        assert second.headers()["Retry-After"] == "60"
