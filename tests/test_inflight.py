"""The per-agent in-flight cap (``AGENT_MAX_INFLIGHT``) as a unit: slots per key, a bounded FIFO wait, and state
only for agents with a request in progress. (Through a listening bridge: tests/test_fairness.py.)"""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import RateLimitedError
from bridge.inflight import InflightLimiter


async def test_slots_are_per_agent_and_state_follows_concurrency() -> None:
    limiter = InflightLimiter(2, 0.05)
    release = asyncio.Event()

    async def hold(key: str) -> None:
        async with limiter.slot(key):
            await release.wait()

    tasks = [asyncio.create_task(hold("alice")) for _ in range(2)]
    await asyncio.sleep(0)
    assert limiter.active("alice") == 2
    with pytest.raises(RateLimitedError) as info:
        async with limiter.slot("alice"):
            pass  # pragma: no cover - never gets a slot
    assert info.value.code == "too_many_concurrent_requests"
    assert info.value.headers == {"Retry-After": "1"}
    async with limiter.slot("bob"):  # another agent is never queued behind alice
        assert limiter.active("bob") == 1
    release.set()
    await asyncio.gather(*tasks)
    assert len(limiter) == 0  # nothing kept for idle agents


async def test_a_waiter_gets_a_slot_as_soon_as_one_frees() -> None:
    limiter = InflightLimiter(1, 5.0)
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with limiter.slot("a"):
            first_in.set()
            await release.wait()
            order.append("first")

    async def second() -> None:
        async with limiter.slot("a"):
            order.append("second")

    t1 = asyncio.create_task(first())
    await first_in.wait()
    t2 = asyncio.create_task(second())
    await asyncio.sleep(0.01)
    assert order == []
    release.set()
    await asyncio.gather(t1, t2)
    assert order == ["first", "second"]
    assert len(limiter) == 0


async def test_zero_means_no_cap_and_no_wait_means_refuse_at_once() -> None:
    unlimited = InflightLimiter(0, 1.0)
    async with unlimited.slot("a"), unlimited.slot("a"), unlimited.slot("a"):
        assert len(unlimited) == 0
    strict = InflightLimiter(1, 0.0)
    async with strict.slot("a"):
        with pytest.raises(RateLimitedError):
            async with strict.slot("a"):
                pass  # pragma: no cover


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    limiter = InflightLimiter(1, 10.0)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.slot("a"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter.cancel()  # the client went away while waiting
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert len(limiter) == 0
    async with limiter.slot("a"):  # the slot came back
        assert limiter.active("a") == 1
